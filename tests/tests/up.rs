//! `drover up`: one command brings up 3 replicas and 3 host agents (fake driver); a domain
//! runs through its life cycle; Ctrl-C stops every process; running it again resumes the
//! same cluster.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::{drover_bin, wait_for};

/// A base port with the two ports after it free too.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base < 60_000 && (1..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

fn up(dir: &std::path::Path, base: u16) -> Child {
    Command::new(drover_bin())
        .args(["up", "--data-dir"])
        .arg(dir)
        .args(["--base-port", &base.to_string()])
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

fn drover(endpoints: &str, args: &[&str]) -> String {
    let out = Command::new(drover_bin()).args(["--endpoint", endpoints]).args(args).output().unwrap();
    assert!(out.status.success(), "drover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let base = free_base();
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect::<Vec<_>>().join(",");
    let child = up(&data, base);
    let eps = endpoints.clone();
    wait_for("three ready hosts", Duration::from_secs(60), || {
        let eps = eps.clone();
        async move {
            let out = Command::new(drover_bin()).args(["--endpoint", &eps, "host", "list"]).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.lines().filter(|l| l.contains(" ready ")).count() == 3).then_some(())
        }
    })
    .await;

    let spec = dir.path().join("web.yaml");
    std::fs::write(
        &spec,
        "vcpus: 1\nmemory_mib: 256\nkernel: /var/lib/drover/vmlinux\ncmdline: console=ttyS0\n",
    )
    .unwrap();
    drover(&endpoints, &["domain", "define", "web", "--file", spec.to_str().unwrap()]);
    drover(&endpoints, &["domain", "start", "web"]);
    let phase = |eps: String| async move {
        let out = Command::new(drover_bin())
            .args(["--endpoint", &eps, "--output", "json", "domain", "info", "web"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some((v["phase"].as_str()?.to_owned(), v["host"].as_str()?.to_owned()))
    };
    wait_for("web to run on a host", Duration::from_secs(30), || {
        let eps = endpoints.clone();
        async move { phase(eps).await.filter(|(p, h)| p == "running" && h.starts_with("host-")) }
    })
    .await;
    // Snapshots and migrations through the CLI (no migration controller yet: a started
    // migration waits in `preparing` until aborted).
    assert!(drover(&endpoints, &["snapshot", "create", "web", "s1"]).contains("snapshot web/s1 created"));
    assert!(drover(&endpoints, &["snapshot", "list", "web"])
        .lines()
        .any(|l| l.starts_with("web ") && l.contains("s1") && l.contains("full")));
    let started = drover(&endpoints, &["--output", "json", "migrate", "start", "web"]);
    let id = serde_json::from_str::<serde_json::Value>(&started).unwrap()["id"].as_u64().unwrap();
    assert!(drover(&endpoints, &["migrate", "list"]).contains("preparing"));
    drover(&endpoints, &["migrate", "abort", &id.to_string()]);
    assert!(drover(&endpoints, &["migrate", "list"]).contains("rolled-back"));
    drover(&endpoints, &["domain", "suspend", "web"]);
    wait_for("web to pause", Duration::from_secs(30), || {
        let eps = endpoints.clone();
        async move { phase(eps).await.filter(|(p, _)| p == "paused") }
    })
    .await;
    drover(&endpoints, &["domain", "resume", "web"]);
    drover(&endpoints, &["domain", "shutdown", "web"]);
    wait_for("web to stop and leave its host", Duration::from_secs(30), || {
        let eps = endpoints.clone();
        async move { phase(eps).await.filter(|(p, h)| p == "stopped" && h.is_empty()) }
    })
    .await;

    let status = interrupt_and_wait(child);
    assert!(status.success(), "drover up exited with {status}");
    assert_eq!(processes_of_cluster(base), 0, "every replica and host process stopped");

    // Again: the same cluster, its history intact.
    let child = up(&data, base);
    let eps = endpoints.clone();
    let verified = wait_for("the cluster to come back", Duration::from_secs(60), || {
        let eps = eps.clone();
        async move {
            let out =
                Command::new(drover_bin()).args(["--endpoint", &eps, "audit", "verify"]).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        }
    })
    .await;
    assert!(verified.starts_with("verify ok"), "{verified}");
    let list = drover(&endpoints, &["domain", "list"]);
    assert!(list.lines().any(|l| l.starts_with("web ") && l.contains("stopped")), "{list}");
    let status = interrupt_and_wait(child);
    assert!(status.success());
}
