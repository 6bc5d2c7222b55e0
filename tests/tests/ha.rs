//! HA failover with real processes and real guests: a control replica, three `drover
//! hostd` processes with the kvm driver, the test guest counting on its console.
//!
//! SIGKILL one host's hostd and leave its VM processes running: they fence themselves
//! when the host's lease passes (their exit records say so), the leader fences the host,
//! the HA domains boot on the other hosts with a new generation, and the non-HA domain is
//! lost, not restarted — never two live VMs of one domain. The killed host's hostd comes
//! back, registers again, becomes ready, and runs none of its old VMs again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::{drover_bin, wait_for, Processes};

struct Hostd {
    name: String,
    run_dir: PathBuf,
    child: Child,
}

impl Hostd {
    fn start(endpoint: &str, dir: &Path, name: &str) -> Hostd {
        let run_dir = dir.join(format!("{name}-vms"));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::options().create(true).append(true).open(log).unwrap();
        let child = Command::new(drover_bin())
            .args(["--endpoint", endpoint, "hostd", "--name", name, "--driver", "kvm", "--tick-ms", "50"])
            .args(["--vcpus", "16", "--memory-mib", "4096", "--run-dir"])
            .arg(&run_dir)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Hostd { name: name.to_owned(), run_dir, child }
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The VMM process of `domain` on this host, if its record names a live one.
    fn vmm_pid(&self, domain: &str) -> Option<u64> {
        let record = std::fs::read_to_string(self.run_dir.join(domain).join("config.json")).ok()?;
        let record: serde_json::Value = serde_json::from_str(&record).ok()?;
        let pid = record["pid"].as_u64()?;
        alive(pid).then_some(pid)
    }

    fn exit_reason(&self, domain: &str) -> String {
        let exit = std::fs::read_to_string(self.run_dir.join(domain).join("exit.json")).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&exit).map(|v| v["reason"].to_string()).unwrap_or_default()
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its VMs too: a failed assertion must not leave guests running.
        if let Ok(entries) = std::fs::read_dir(&self.run_dir) {
            for e in entries.flatten() {
                if let Some(pid) = self.vmm_pid(&e.file_name().to_string_lossy()) {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// Whether process `pid` runs (a zombie does not count).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn drover(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(drover_bin()).args(["--endpoint", endpoint]).args(args).output().unwrap();
    assert!(out.status.success(), "drover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn info(endpoint: &str, domain: &str) -> serde_json::Value {
    serde_json::from_str(&drover(endpoint, &["--output", "json", "domain", "info", domain])).unwrap()
}

fn host_states(endpoint: &str) -> BTreeMap<String, String> {
    let list: serde_json::Value =
        serde_json::from_str(&drover(endpoint, &["--output", "json", "host", "list"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap().to_owned(), h["state"].as_str().unwrap().to_owned()))
        .collect()
}

async fn wait_ready(endpoint: &str, hosts: &[&str]) {
    wait_for(&format!("{hosts:?} to be ready"), Duration::from_secs(30), || async {
        let states = host_states(endpoint);
        hosts.iter().all(|h| states.get(*h).is_some_and(|s| s == "ready")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_ha_domains_boot_elsewhere_and_its_vms_fence_themselves() {
    if !vmm::kvm_present_for("the HA failover test") {
        return;
    }
    let mut cluster = Processes::new();
    let ep = cluster.bootstrap(&[]).await;
    let dir = cluster.dir.path().to_owned();
    let kernel = dir.join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    // Everything lands on h1: it is the only host while the domains start.
    let mut h1 = Hostd::start(&ep, &dir, "h1");
    wait_ready(&ep, &["h1"]).await;
    let guest =
        format!("vcpus: 1\nmemory_mib: 32\nkernel: {}\ncmdline: drover.tick_ms=20\n", kernel.display());
    for (name, ha) in [("db", "ha_priority: 9\n"), ("web", "ha_priority: 1\n"), ("batch", "")] {
        let spec = dir.join(format!("{name}.yaml"));
        std::fs::write(&spec, format!("{guest}{ha}")).unwrap();
        drover(&ep, &["domain", "define", name, "--file", spec.to_str().unwrap()]);
        drover(&ep, &["domain", "start", name]);
    }
    wait_for("the three guests to run on h1", Duration::from_secs(30), || async {
        ["db", "web", "batch"]
            .iter()
            .all(|d| {
                let i = info(&ep, d);
                i["phase"] == "running" && i["host"] == "h1"
            })
            .then_some(())
    })
    .await;
    let old_pids: BTreeMap<&str, u64> = ["db", "web", "batch"]
        .into_iter()
        .map(|d| (d, h1.vmm_pid(d).unwrap_or_else(|| panic!("{d} has a live VMM on h1"))))
        .collect();
    let before: BTreeMap<&str, u64> =
        ["db", "web"].into_iter().map(|d| (d, info(&ep, d)["generation"].as_u64().unwrap())).collect();
    let h2 = Hostd::start(&ep, &dir, "h2");
    let h3 = Hostd::start(&ep, &dir, "h3");
    wait_ready(&ep, &["h1", "h2", "h3"]).await;

    // h1's hostd dies; its VMs do not (yet).
    let killed = Instant::now();
    h1.sigkill();
    let mut fenced_at = BTreeMap::new();
    let mut running_at = BTreeMap::new();
    // Watch closely: at no moment may a domain have a live VM on h1 and run elsewhere.
    wait_for("db and web to run on other hosts", Duration::from_secs(30), || {
        let now = killed.elapsed();
        for (d, pid) in &old_pids {
            if !alive(*pid) {
                fenced_at.entry(*d).or_insert(now);
            }
        }
        for d in ["db", "web"] {
            let i = info(&ep, d);
            if i["phase"] == "running" && i["host"] != "h1" {
                assert!(
                    !alive(old_pids[d]),
                    "{d} runs on {} while its old VM on h1 still lives: a double run",
                    i["host"]
                );
                running_at.entry(d).or_insert(now);
            }
        }
        let done = running_at.len() == 2;
        async move { done.then_some(()) }
    })
    .await;
    for d in ["db", "web"] {
        let i = info(&ep, d);
        assert!(i["host"] == "h2" || i["host"] == "h3", "{d} runs on {}", i["host"]);
        assert!(i["generation"].as_u64().unwrap() > before[d], "{d} got a new run: {i}");
        let new_host = if i["host"] == "h2" { &h2 } else { &h3 };
        assert!(new_host.vmm_pid(d).is_some(), "{d} has a live VMM on {}", new_host.name);
    }
    // Every VM left on h1 ended itself, saying why.
    for (d, pid) in &old_pids {
        assert!(!alive(*pid), "{d}'s VM on h1 still runs");
        let reason = h1.exit_reason(d);
        assert!(reason.contains("fenced itself"), "{d} on h1 ended: {reason}");
    }
    let batch = info(&ep, "batch");
    assert_eq!((batch["phase"].as_str(), batch["host"].as_str()), (Some("lost"), Some("")), "{batch}");
    assert_eq!(batch["desired"], "running", "a lost domain keeps what the user wanted");
    assert_eq!(host_states(&ep)["h1"], "fenced");
    let events = drover(&ep, &["--output", "json", "events", "--kind", "host", "--name", "h1"]);
    for (state, by) in [("Suspect", "system/ha"), ("Fenced", "system/ha")] {
        let line = format!(r#""principal":"{by}""#);
        assert!(
            events.lines().any(|l| l.contains(&format!(r#""state":"{state}""#)) && l.contains(&line)),
            "h1's history lacks {state} by {by}:\n{events}"
        );
    }
    eprintln!(
        "failover: VMs on h1 fenced at {:?}, db running elsewhere at {:?}, web at {:?} after the SIGKILL",
        fenced_at, running_at["db"], running_at["web"]
    );

    // h1's hostd returns: it registers again and becomes ready, and runs none of its old
    // VMs (they belong to runs that moved on or were lost).
    let h1_back = Hostd::start(&ep, &dir, "h1");
    wait_ready(&ep, &["h1"]).await;
    // A negative: ten reconcile passes (50 ms each) in which nothing may start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for d in ["db", "web", "batch"] {
        assert!(h1_back.vmm_pid(d).is_none(), "{d} runs on h1 again");
    }
    assert_eq!(info(&ep, "batch")["phase"], "lost");
    drop((h2, h3, h1_back));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_host_moves_its_domains_and_keeps_it_out_of_scheduling() {
    if !vmm::kvm_present_for("the drain test") {
        return;
    }
    let mut cluster = Processes::new();
    let ep = cluster.bootstrap(&[]).await;
    let dir = cluster.dir.path().to_owned();
    let kernel = dir.join("guest.elf");
    testguest::write_to(&kernel).unwrap();
    let h1 = Hostd::start(&ep, &dir, "h1");
    wait_ready(&ep, &["h1"]).await;
    let spec = dir.join("app.yaml");
    std::fs::write(
        &spec,
        format!(
            "vcpus: 1\nmemory_mib: 32\nkernel: {}\ncmdline: drover.tick_ms=20\nha_priority: 1\n",
            kernel.display()
        ),
    )
    .unwrap();
    for name in ["a", "b"] {
        drover(&ep, &["domain", "define", name, "--file", spec.to_str().unwrap()]);
        drover(&ep, &["domain", "start", name]);
    }
    wait_for("a and b to run on h1", Duration::from_secs(30), || async {
        ["a", "b"].iter().all(|d| info(&ep, d)["phase"] == "running").then_some(())
    })
    .await;
    let h2 = Hostd::start(&ep, &dir, "h2");
    wait_ready(&ep, &["h1", "h2"]).await;
    let out = drover(&ep, &["host", "drain", "h1"]);
    assert!(out.contains("2 domains moved"), "{out}");
    wait_for("a and b to run on h2", Duration::from_secs(30), || async {
        ["a", "b"]
            .iter()
            .all(|d| {
                let i = info(&ep, d);
                i["phase"] == "running" && i["host"] == "h2"
            })
            .then_some(())
    })
    .await;
    assert_eq!(host_states(&ep)["h1"], "maintenance");
    for d in ["a", "b"] {
        assert!(h1.vmm_pid(d).is_none(), "{d} still runs on the drained host");
        assert!(h2.vmm_pid(d).is_some(), "{d} has no VMM on h2");
    }
    // Nothing new goes to a host in maintenance, HA restarts included.
    drover(&ep, &["domain", "define", "c", "--file", spec.to_str().unwrap()]);
    drover(&ep, &["domain", "start", "c"]);
    assert_eq!(info(&ep, "c")["host"], "h2");
    // What-if: h2 failing would leave a, b and c nowhere to go (h1 is in maintenance);
    // with h1 back, h1 would take them. Nothing changes by asking.
    let plan = drover(&ep, &["ha", "plan", "--fail", "h2"]);
    for d in ["a", "b", "c"] {
        assert!(plan.lines().any(|l| l.contains(d) && l.contains("DOES NOT FIT")), "{plan}");
    }
    drover(&ep, &["host", "ready", "h1"]);
    let plan = drover(&ep, &["ha", "plan", "--fail-any", "1"]);
    assert!(plan.contains("if h2 fail:") && plan.contains("restarts on h1"), "{plan}");
    assert!(!plan.contains("DOES NOT FIT"), "{plan}");
    assert_eq!(info(&ep, "a")["host"], "h2", "a plan moves nothing");
    for (args, code) in [
        (&["ha", "plan", "--fail", "nope"][..], "NotFound"),
        (&["ha", "plan"][..], "InvalidArgument"),
        (&["ha", "plan", "--fail-any", "9"][..], "InvalidArgument"),
    ] {
        let out = Command::new(drover_bin()).args(["--endpoint", &ep]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(code), "{args:?}: {err}");
    }
}
