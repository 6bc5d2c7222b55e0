//! `drover up`: one command brings up 3 replicas and 3 host agents running real guests
//! under Drover's VMM (the fake driver where /dev/kvm is missing, said loudly); the
//! example domain boots the test guest, runs through its life cycle, and its console
//! shows the guest's marker; Ctrl-C stops every process and VM; running it again resumes
//! the same cluster.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::{drover_bin, free_run, up_cli, up_config, wait_for};

/// Stops a `drover up` the test left behind (a failed assertion), so no cluster or VM
/// outlives the test.
struct UpGuard(Option<u32>);

impl Drop for UpGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && std::path::Path::new(&format!("/proc/{pid}")).exists() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `drover up` of a cluster in `dir` on the 16 ports from `base` (`free_run(16)`): the
/// replicas and hosts, then their metrics from base + 7, the peer ports from base + 13.
fn up_command(dir: &std::path::Path, base: u16, extra: &[&str]) -> Command {
    let mut command = Command::new(drover_bin());
    command
        .args(["up", "--no-user-config"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .args(["--base-port", &base.to_string(), "--metrics-base-port", &(base + 7).to_string()])
        .args(["--peer-base-port", &(base + 13).to_string()]);
    command
}

fn up(dir: &std::path::Path, base: u16) -> Child {
    up_command(dir, base, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("drover up starts")
}

fn interrupt_and_wait(mut child: Child) -> std::process::ExitStatus {
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "drover up did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line names the first replica's address: every replica
/// (listen or join) and every host agent (endpoints) of this cluster.
fn processes_of_cluster(base: u16) -> usize {
    let out = Command::new("pgrep").args(["-f", &format!("127.0.0.1:{base}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_cluster_runs_domains_stops_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let config = up_config(&data);
    let cfg = config.as_path();
    let base = free_run(16);
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(",");
    let child = up(&data, base);
    let mut guard = UpGuard(Some(child.id()));
    tests::wait_ready_hosts(&config, 3).await;

    // Each host says where it is reached: its replica's address, not a placeholder.
    let hosts = up_cli(&config, &["host", "list"]);
    for h in 1..=3u16 {
        let line = hosts.lines().find(|l| l.starts_with(&format!("host-{h} "))).unwrap_or_default();
        assert!(line.contains(&format!("127.0.0.1:{}", base + 3 + h)), "{hosts}");
    }

    // Every host holds a replica of the log: three learners beside the three voters.
    let admin = raft::tls::Transport::from_dir(Some(&data.join("tls/admin")))
        .expect("up made the admin's certificate");
    let client = raft::client::Client::with_transport(vec![format!("127.0.0.1:{base}")], admin);
    wait_for("the hosts' replicas to join as learners", Duration::from_secs(60), || async {
        let s = client.status(&format!("127.0.0.1:{base}")).await.ok()?;
        (s.voters == [1, 2, 3] && s.learners == [101, 102, 103]).then_some(())
    })
    .await;

    // Where KVM is missing, `drover up` runs the fake driver and no guest boots.
    let kvm = vmm::kvm_present_for("booting guests under drover up (it ran the fake driver)");
    // The example spec `up` wrote boots the test guest it wrote beside it.
    let spec = data.join("hello.yaml");
    up_cli(&config, &["domain", "define", "web", "--file", spec.to_str().unwrap()]);
    // `--wait` returns once the host reports it running, and says where; piped, the
    // spinner stays off (no escape codes).
    let started = up_cli(&config, &["domain", "start", "web", "--wait"]);
    assert!(started.contains("domain web is running on host host-"), "{started}");
    assert!(!started.contains('\x1b'), "{started:?}");
    let info: serde_json::Value =
        serde_json::from_str(&up_cli(&config, &["--output", "json", "domain", "info", "web"])).unwrap();
    assert!(info["uptime_s"].is_u64() && info["phase_since_ms"].as_u64() > Some(0), "{info}");
    let phase = |eps: String| async move {
        let out = tests::drover_command()
            .arg("--config")
            .arg(cfg)
            .args(["--endpoint", &eps, "--output", "json", "domain", "info", "web"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some((v["phase"].as_str()?.to_owned(), v["host"].as_str()?.to_owned()))
    };
    let (_, host) = wait_for("web to run on a host", Duration::from_secs(30), || {
        let eps = endpoints.clone();
        async move { phase(eps).await.filter(|(p, h)| p == "running" && h.starts_with("host-")) }
    })
    .await;
    let console = data.join(&host).join("vms/web/console.log");
    if kvm {
        wait_for("the guest's marker on its console", Duration::from_secs(30), || {
            let console = console.clone();
            async move { std::fs::read_to_string(console).ok()?.contains(testguest::MARKER).then_some(()) }
        })
        .await;
        // The console through the API, from whichever host runs it: what it printed so
        // far, then, following, the counter as it goes on (a tick every second).
        let printed = up_cli(&config, &["domain", "console", "web"]);
        assert!(printed.contains(testguest::MARKER), "{printed}");
        let tail = up_cli(&config, &["domain", "console", "web", "--tail-bytes", "10"]);
        assert_eq!(tail.len(), 10, "{tail:?}");
        let ticks_before = printed.matches(testguest::TICK_PREFIX).count();
        let mut follow = tests::KillOnDrop(
            tests::drover_command()
                .arg("--config")
                .arg(cfg)
                .args(["domain", "console", "web", "--follow"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdout = follow.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ticks = 0;
        while ticks <= ticks_before + 1 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("the followed console goes on with new ticks");
            ticks += usize::from(line.contains(testguest::TICK_PREFIX));
        }
        drop(follow);
    }
    // A domain that is not placed has no console; an unknown one is not found.
    let refused = tests::drover_command()
        .arg("--config")
        .arg(cfg)
        .args(["domain", "console", "nothing-here"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("NotFound"), "{refused:?}");
    // Snapshots through the CLI: the host takes the snapshot, into the snapshot directory
    // every host of `drover up` shares.
    let taken = up_cli(&config, &["snapshot", "create", "web", "s1"]);
    assert!(taken.contains(&format!("snapshot web/s1 taken on host {host}")), "{taken}");
    assert!(up_cli(&config, &["snapshot", "list", "web"])
        .lines()
        .any(|l| l.starts_with("web ") && l.contains("s1") && l.contains("full") && l.contains("taken")));
    if kvm {
        let files: Vec<_> = std::fs::read_dir(data.join("snapshots/web")).unwrap().collect();
        assert_eq!(files.len(), 1, "one snapshot file: {files:?}");
    }
    up_cli(&config, &["domain", "suspend", "web"]);
    wait_for("web to pause", Duration::from_secs(30), || {
        let eps = endpoints.clone();
        async move { phase(eps).await.filter(|(p, _)| p == "paused") }
    })
    .await;
    up_cli(&config, &["domain", "resume", "web"]);
    let stopped = up_cli(&config, &["domain", "shutdown", "web", "--wait"]);
    assert!(stopped.contains("domain web has stopped"), "{stopped}");
    assert_eq!(phase(endpoints.clone()).await, Some(("stopped".to_owned(), String::new())));

    if kvm {
        let text = std::fs::read_to_string(&console).unwrap();
        assert!(text.contains("drover-guest: power off"), "the guest never saw the shutdown:\n{text}");
    }

    // A second guest is left running when the cluster stops: Ctrl-C ends it too.
    up_cli(&config, &["domain", "define", "left", "--file", spec.to_str().unwrap()]);
    up_cli(&config, &["domain", "start", "left"]);
    let left_phase = |eps: String| async move {
        let out = tests::drover_command()
            .arg("--config")
            .arg(cfg)
            .args(["--endpoint", &eps, "--output", "json", "domain", "info", "left"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["phase"].as_str()? == "running").then(|| v["host"].as_str().unwrap_or_default().to_owned())
    };
    let first_host = wait_for("left to run", Duration::from_secs(30), || left_phase(endpoints.clone())).await;
    // A live migration between `drover up`'s hosts: under kvm the guest moves (the fake
    // drivers of separate processes share no stream: the copy fails and rolls back).
    let moved = tests::drover_command()
        .arg("--config")
        .arg(cfg)
        .args(["--output", "json", "migrate", "start", "left", "--wait"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&moved.stderr).into_owned();
    let moved: serde_json::Value = serde_json::from_slice(&moved.stdout).unwrap_or_default();
    if kvm {
        assert_eq!(moved["phase"], "committed", "{moved} {said}");
        assert_ne!(moved["target"], first_host.as_str(), "{moved}");
    }
    let left_host = wait_for("left to run", Duration::from_secs(30), || left_phase(endpoints.clone())).await;
    if kvm {
        assert_eq!(moved["target"], left_host.as_str(), "{moved}");
    }
    let left_socket = data.join(&left_host).join("vms/left").join(vmm::control::SOCKET_FILE);
    if kvm {
        assert!(left_socket.exists(), "no VMM for left");
    }

    guard.0 = None;
    let status = interrupt_and_wait(child);
    assert!(status.success(), "drover up exited with {status}");
    assert_eq!(processes_of_cluster(base), 0, "every replica and host process stopped");
    assert!(!left_socket.exists(), "a VM outlived drover up");

    // Again: the same cluster, its history intact.
    let child = up(&data, base);
    let mut guard = UpGuard(Some(child.id()));
    let eps = endpoints.clone();
    let verified = wait_for("the cluster to come back", Duration::from_secs(60), || {
        let eps = eps.clone();
        async move {
            let out = tests::drover_command()
                .arg("--config")
                .arg(cfg)
                .args(["--endpoint", &eps, "audit", "verify"])
                .output()
                .ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        }
    })
    .await;
    assert!(verified.starts_with("verify ok"), "{verified}");
    let list = up_cli(&config, &["domain", "list"]);
    assert!(list.lines().any(|l| l.starts_with("web ") && l.contains("stopped")), "{list}");
    // The domain that should run runs again.
    wait_for("left to run again", Duration::from_secs(30), || left_phase(endpoints.clone())).await;
    guard.0 = None;
    let status = interrupt_and_wait(child);
    assert!(status.success());
}

/// The pid of the process of this cluster whose command line holds `pattern`.
fn pid_of(pattern: &str) -> Option<u32> {
    let out = Command::new("pgrep").args(["-f", pattern]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_replica_is_restarted_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_run(16);
    let child = up_command(dir.path(), base, &["--driver", "fake"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("drover up starts");
    let mut guard = UpGuard(Some(child.id()));
    let config = up_config(dir.path());
    let cfg = config.as_path();
    wait_for("the cluster to answer", Duration::from_secs(60), || async move {
        let out = tests::drover_command().arg("--config").arg(cfg).args(["host", "list"]).output().ok()?;
        (String::from_utf8_lossy(&out.stdout).matches(" ready ").count() == 3).then_some(())
    })
    .await;
    let spec = dir.path().join("hello.yaml");
    // The bootstrap replica, most likely the leader: the harder case.
    let replica_1 = format!("server --id 1 --listen 127.0.0.1:{base}");
    let first = pid_of(&replica_1).expect("replica 1 runs");
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        if i == 10 {
            Command::new("kill").args(["-KILL", &first.to_string()]).status().unwrap();
        }
        let name = format!("w{i}");
        // Every write succeeds: the CLI moves on to the replicas that still answer.
        up_cli(&config, &["domain", "define", &name, "--file", spec.to_str().unwrap()]);
        acknowledged.push(name);
    }
    let list = up_cli(&config, &["domain", "list"]);
    for name in &acknowledged {
        assert!(list.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} was lost:\n{list}");
    }
    // `up` restarted replica 1, and it caught up with what was written without it.
    let restarted = wait_for("replica 1 to be restarted", Duration::from_secs(30), || async {
        pid_of(&replica_1).filter(|p| *p != first)
    })
    .await;
    let own = format!("127.0.0.1:{base}");
    wait_for("replica 1 to catch up", Duration::from_secs(60), || {
        let own = own.clone();
        async move {
            let out = tests::drover_command()
                .arg("--config")
                .arg(cfg)
                .args(["--endpoint", &own, "--local", "domain", "list"])
                .output()
                .ok()?;
            let list = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && list.lines().any(|l| l.starts_with("w29 "))).then_some(())
        }
    })
    .await;
    assert!(std::path::Path::new(&format!("/proc/{restarted}")).exists());
    let verified = up_cli(&config, &["audit", "verify"]);
    assert!(verified.starts_with("verify ok"), "{verified}");
    // The control plane as it stands: three voters and three host learners, one leader,
    // every host renewing its lease.
    let status: serde_json::Value =
        serde_json::from_str(&up_cli(&config, &["--output", "json", "cluster", "status"])).unwrap();
    let replicas = status["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 6, "{status}");
    assert_eq!(replicas.iter().filter(|r| r["role"] == "leader").count(), 1, "{status}");
    assert_eq!(replicas.iter().filter(|r| r["role"] == "learner").count(), 3, "{status}");
    for h in status["hosts"].as_array().unwrap() {
        assert_eq!(h["state"], "ready", "{status}");
        assert!(h["lease_age_ms"].as_u64().is_some_and(|a| a < 5_000), "{status}");
    }
    guard.0 = None;
    let status = interrupt_and_wait(child);
    assert!(status.success(), "drover up exited with {status}");
    assert_eq!(processes_of_cluster(base), 0, "every replica and host process stopped");
}

/// A data directory from before the replicas' peer ports names one port per replica in its
/// membership, which no longer serves raft: `up` refuses it, saying so, and starts nothing.
#[test]
fn a_cluster_from_before_the_peer_ports_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("replica-1")).unwrap();
    let base = free_run(16);
    let out = up_command(dir.path(), base, &["--driver", "fake"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("from before the replicas' peer ports"), "{err}");
    assert_eq!(processes_of_cluster(base), 0);
    assert!(!dir.path().join("layout").exists());
}
