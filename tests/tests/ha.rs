//! HA failover with real processes and real guests: a control replica, three `drover
//! hostd` processes with the kvm driver, the test guest counting on its console.
//!
//! SIGKILL one host's hostd and leave its VM processes running: they fence themselves
//! when the host's lease passes (their exit records say so), the leader fences the host,
//! the HA domains boot on the other hosts with a new generation, and the non-HA domain is
//! lost, not restarted — never two live VMs of one domain. The killed host's hostd comes
//! back, registers again, becomes ready, and runs none of its old VMs again.
//!
//! A host cut off from the network (its own namespace, its cable pulled at a switch the
//! test builds out of namespaces) fences itself the same way while its hostd lives on, and
//! rejoins once plugged back. Draining a host moves its domains off; `ha plan` says where
//! they would go if hosts failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::{alive, drover_bin, wait_for, write_guest_spec, Processes};

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
    for (name, ha) in [("db", Some(9)), ("web", Some(1)), ("batch", None)] {
        let spec = dir.join(format!("{name}.yaml"));
        write_guest_spec(&spec, &kernel, 32, 20, ha).unwrap();
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
    write_guest_spec(&spec, &kernel, 32, 20, Some(1)).unwrap();
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
    // Live: the drain migrated them (hostd here reads the cluster through the API).
    assert_eq!(out.matches("(live").count(), 2, "{out}");
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
    // An operator may not declare a host fenced while it renews its lease: HA would start
    // its domains elsewhere while they still run there.
    let mut hosts = proto::api::hosts_client::HostsClient::connect(format!("http://{ep}")).await.unwrap();
    let refused = hosts
        .set_state(proto::api::SetHostStateRequest {
            request_id: "fence-a-live-host".into(),
            name: "h2".into(),
            state: proto::api::HostState::Fenced.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("renewed its lease"), "{refused}");
    assert_eq!(host_states(&ep)["h2"], "ready");
    // Admission control: with one host in reserve, a second HA domain too big for the
    // survivor is refused, and says why.
    drover(&ep, &["cluster", "set", "--ha-reserve-hosts", "1"]);
    assert!(drover(&ep, &["cluster", "settings"]).contains("ha_reserve_hosts  1"));
    let big = dir.join("big.yaml");
    write_guest_spec(&big, &kernel, 3000, 20, Some(1)).unwrap();
    for name in ["big1", "big2"] {
        drover(&ep, &["domain", "define", name, "--file", big.to_str().unwrap()]);
    }
    drover(&ep, &["domain", "start", "big1"]);
    let refused =
        Command::new(drover_bin()).args(["--endpoint", &ep, "domain", "start", "big2"]).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("FailedPrecondition")
            && err.contains("would not run again"),
        "{err}"
    );
    assert_eq!(info(&ep, "big2")["phase"], "stopped");
    drover(&ep, &["cluster", "set", "--ha-reserve-hosts", "0"]);
    for (args, code) in [
        (&["host", "clear", "h2"][..], "FailedPrecondition"),
        (&["cluster", "set", "--ha-reserve-hosts", "99"][..], "InvalidArgument"),
        (&["ha", "plan", "--fail", "nope"][..], "NotFound"),
        (&["ha", "plan"][..], "InvalidArgument"),
        (&["ha", "plan", "--fail-any", "9"][..], "InvalidArgument"),
    ] {
        let out = Command::new(drover_bin()).args(["--endpoint", &ep]).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(code), "{args:?}: {err}");
    }
}

/// A network of namespaces the test owns: a switch (a bridge in a namespace of its own)
/// and, per node, a namespace joined to it by a veth pair, with an address only there.
/// Deleted (with everything in it) on drop.
struct Net {
    prefix: String,
    nodes: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Net {
    fn new(nodes: &[&str]) -> Net {
        let prefix = format!("dha{}", std::process::id() % 100_000);
        let net = Net { prefix: prefix.clone(), nodes: nodes.iter().map(|n| n.to_string()).collect() };
        let sw = net.ns("sw");
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (i, node) in nodes.iter().enumerate() {
            let ns = net.ns(node);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let (inner, outer) = (format!("{prefix}i{i}"), format!("{prefix}o{i}"));
            ip(&["link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer, "netns", &sw]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.addr(i)), "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &sw, "link", "set", &outer, "master", "br0", "up"]);
        }
        net
    }

    fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.231.{}.{}", std::process::id() % 200, 10 + i)
    }

    /// Cut node `i` off (its cable pulled at the switch), or plug it back.
    fn cable(&self, i: usize, plugged: bool) {
        let state = if plugged { "up" } else { "down" };
        ip(&["-n", &self.ns("sw"), "link", "set", &format!("{}o{i}", self.prefix), state]);
    }

    /// `drover` run inside node `node`'s namespace.
    fn drover(&self, node: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(node)]).arg(drover_bin());
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for node in self.nodes.iter().map(String::as_str).chain(["sw"]) {
            let ns = self.ns(node);
            // Whatever still runs in it first.
            let _ = Command::new("ip").args(["netns", "pids", &ns]).output().map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            });
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_fences_itself_its_ha_domains_run_elsewhere_and_it_rejoins() {
    if !vmm::kvm_present_for("the cut-off host test") {
        return;
    }
    let net = Net::new(&["ctl", "h1", "h2"]);
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("{}:7401", net.addr(0));
    let peer = format!("{}:7451", net.addr(0));
    let spawn = |node: &str, args: &[&str]| -> Child {
        let log = std::fs::File::create(dir.path().join(format!("{node}.log"))).unwrap();
        net.drover(node)
            .args(args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    };
    let data = dir.path().join("ctl-data");
    let mut children = vec![spawn(
        "ctl",
        &[
            "server",
            "--id",
            "1",
            "--listen",
            &ep,
            "--peer-listen",
            &peer,
            "--insecure",
            "--bootstrap",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    )];
    let cli = |args: &[&str]| -> Option<String> {
        let out = net.drover("ctl").args(["--endpoint", &ep]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let run_dir = |h: &str| dir.path().join(format!("{h}-vms"));
    for (i, h) in ["h1", "h2"].iter().enumerate() {
        let rd = run_dir(h);
        let address = format!("{}:7500", net.addr(i + 1));
        children.push(spawn(
            h,
            &[
                "--endpoint",
                &ep,
                "hostd",
                "--name",
                h,
                "--address",
                &address,
                "--driver",
                "kvm",
                "--tick-ms",
                "50",
                "--vcpus",
                "8",
                "--memory-mib",
                "2048",
                "--run-dir",
                rd.to_str().unwrap(),
            ],
        ));
        if i == 0 {
            // Let h1 take the domains: h2 starts after they run.
            wait_for("h1 to be ready", Duration::from_secs(60), || async {
                cli(&["host", "list"])
                    .filter(|l| l.lines().any(|l| l.starts_with("h1 ") && l.contains(" ready ")))
                    .map(|_| ())
            })
            .await;
            let kernel = dir.path().join("guest.elf");
            testguest::write_to(&kernel).unwrap();
            for (name, ha) in [("db", Some(3)), ("batch", None)] {
                let spec = dir.path().join(format!("{name}.yaml"));
                write_guest_spec(&spec, &kernel, 32, 20, ha).unwrap();
                cli(&["domain", "define", name, "--file", spec.to_str().unwrap()]).expect("defined");
                cli(&["domain", "start", name]).expect("started");
            }
        }
    }
    let info = |d: &str| -> serde_json::Value {
        cli(&["--output", "json", "domain", "info", d])
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    };
    wait_for("db and batch to run on h1", Duration::from_secs(60), || async {
        ["db", "batch"].iter().all(|d| info(d)["phase"] == "running" && info(d)["host"] == "h1").then_some(())
    })
    .await;
    let pid_of = |h: &str, d: &str| -> Option<u64> {
        let record = std::fs::read_to_string(run_dir(h).join(d).join("config.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&record).ok()?["pid"].as_u64()
    };
    let old_db = pid_of("h1", "db").expect("db's VMM on h1");
    let old_batch = pid_of("h1", "batch").expect("batch's VMM on h1");
    wait_for("h2 to be ready", Duration::from_secs(60), || async {
        cli(&["host", "list"])
            .filter(|l| l.lines().any(|l| l.starts_with("h2 ") && l.contains(" ready ")))
            .map(|_| ())
    })
    .await;

    // Pull h1's cable: hostd lives on but reaches no one.
    net.cable(1, false);
    wait_for("db to run on h2", Duration::from_secs(30), || async {
        let i = info("db");
        if i["host"] == "h2" {
            assert!(!alive(old_db), "db runs on h2 while its VM on cut-off h1 still lives");
        }
        (i["phase"] == "running" && i["host"] == "h2").then_some(())
    })
    .await;
    for pid in [old_db, old_batch] {
        assert!(!alive(pid), "a VM of the cut-off host still runs");
    }
    assert_eq!(info("batch")["phase"], "lost");

    // Plug it back: h1 hears it was fenced, destroys what it had, registers again.
    net.cable(1, true);
    wait_for("h1 to be ready again", Duration::from_secs(60), || async {
        cli(&["host", "list"])
            .filter(|l| l.lines().any(|l| l.starts_with("h1 ") && l.contains(" ready ")))
            .map(|_| ())
    })
    .await;
    assert!(pid_of("h1", "db").is_none_or(|p| !alive(p)), "h1 runs db again");
    assert_eq!(info("db")["host"], "h2");
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
