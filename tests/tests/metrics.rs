//! Metrics, as an operator collects them: Debian's Prometheus (installed by
//! `scripts/deps`), started on loopback with a configuration naming every metrics address
//! `drover up` printed, scrapes all six processes of the cluster; after writes and a VM
//! start, its HTTP API shows the series Drover exports, with counters that moved.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{drover_bin, free_port, free_run, up_cli, KillOnDrop, UpCluster};

/// `text` as a URL query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant query of Prometheus' HTTP API: each series' labels and value.
fn query(prometheus: &str, promql: &str) -> Option<Vec<(serde_json::Value, f64)>> {
    let mut stream = TcpStream::connect(prometheus).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request =
        format!("GET /api/v1/query?query={} HTTP/1.0\r\nHost: {prometheus}\r\n\r\n", encode(promql));
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body: serde_json::Value = serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()?;
    (body["status"] == "success").then_some(())?;
    body["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
        .collect()
}

/// Wait until `promql`'s series all satisfy `ok` (and there are `count` of them); a
/// timeout says what the query last gave.
async fn until(prometheus: &str, promql: &str, count: usize, ok: impl Fn(f64) -> bool + Copy) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let series = query(prometheus, promql);
        if series.as_ref().is_some_and(|s| s.len() == count && s.iter().all(|(_, v)| ok(*v))) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 60 s waiting for {count} series of `{promql}` as wanted; the last answer: {series:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_replica_and_host_of_a_drover_up_cluster() {
    let prometheus_bin = which("prometheus").expect("prometheus is not installed (scripts/deps installs it)");
    let dir = tempfile::tempdir().unwrap();
    // A cluster takes base..=base+6 (learners from base+4), its peer ports three more,
    // its metrics six more.
    let (base, peer_base, metrics_base) = (free_run(7), free_run(3), free_run(6));
    let mut up = UpCluster(
        Command::new(drover_bin())
            .args(["up", "--no-user-config", "--data-dir"])
            .arg(dir.path().join("cluster"))
            .args(["--base-port", &base.to_string(), "--metrics-base-port", &metrics_base.to_string()])
            .args(["--peer-base-port", &peer_base.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("drover up starts"),
    );
    // `drover up` says where every process serves its metrics.
    let mut lines = BufReader::new(up.0.stdout.take().unwrap()).lines();
    let printed = loop {
        let line = lines.next().expect("drover up printed its addresses").unwrap();
        if let Some(rest) = line.trim_start().strip_prefix("metrics") {
            break rest.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        }
    };
    let targets: Vec<String> = (0..6).map(|i| format!("127.0.0.1:{}", metrics_base + i)).collect();
    assert_eq!(printed, targets.iter().map(|t| format!("http://{t}/metrics")).collect::<Vec<_>>());
    // Keep reading its output, so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));

    let cluster = tests::up_config(&dir.path().join("cluster"));
    tests::wait_ready_hosts(&cluster, 3).await;
    let spec = dir.path().join("cluster/hello.yaml");
    up_cli(&cluster, &["domain", "define", "web", "--file", spec.to_str().unwrap()]);
    up_cli(&cluster, &["domain", "start", "web"]);

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: drover\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
        ),
    )
    .unwrap();
    let prometheus = format!("127.0.0.1:{}", free_port());
    let _prometheus = KillOnDrop(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts"),
    );

    // Every replica and host is scraped.
    until(&prometheus, "up", 6, |v| v == 1.0).await;
    // Raft: one leader among the voters, every replica (hosts' learners too) applied the
    // log, and each synced its log with fdatasync.
    until(&prometheus, "sum(drover_raft_is_leader)", 1, |v| v == 1.0).await;
    until(&prometheus, "drover_raft_applied_index", 6, |v| v > 0.0).await;
    until(&prometheus, "drover_raft_log_sync_seconds_count", 6, |v| v > 0.0).await;
    // The API: the start was counted, by method and code, and timed.
    until(
        &prometheus,
        r#"drover_api_requests_total{method="/drover.api.v1.Domains/Start",code="OK"}"#,
        1,
        |v| v >= 1.0,
    )
    .await;
    until(&prometheus, "sum(drover_api_request_seconds_count)", 1, |v| v > 0.0).await;
    // The decision path and the archive on the leader.
    until(&prometheus, r#"sum(drover_proposals_total{outcome="applied"})"#, 1, |v| v > 0.0).await;
    until(&prometheus, "sum(drover_archive_events_total)", 1, |v| v > 0.0).await;
    // The hosts: every one passes, one runs the domain, and their leases are held.
    until(&prometheus, "drover_hostd_reconcile_seconds_count", 3, |v| v > 0.0).await;
    // (The API first: a guest that does not run fails here, saying where it stands.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = up_cli(&cluster, &["--output", "json", "domain", "info", "web"]);
        let phase = serde_json::from_str::<serde_json::Value>(&info).ok().map(|v| v["phase"].clone());
        if phase.is_some_and(|p| p == "running") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "web does not run: {info}\n{}",
            up_cli(&cluster, &["host", "list"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until(&prometheus, r#"sum(drover_hostd_vms{phase="running"})"#, 1, |v| v == 1.0).await;
    until(&prometheus, "drover_hostd_lease_remaining_seconds", 3, |v| v > 0.0).await;
    until(&prometheus, r#"sum(drover_hostd_driver_call_seconds_count{call="start"})"#, 1, |v| v >= 1.0).await;
    if vmm::kvm_present_for("per-VM metrics of a guest under the own VMM") {
        until(&prometheus, r#"drover_vm_resident_bytes{domain="web"}"#, 1, |v| v > 0.0).await;
        until(&prometheus, r#"drover_vm_cpu_seconds{domain="web"}"#, 1, |v| v >= 0.0).await;
        until(&prometheus, r#"drover_vm_exits_total{domain="web"}"#, 1, |v| v > 0.0).await;
    }
    up_cli(&cluster, &["domain", "destroy", "web"]);
    drop(up);
}

/// The path of `program` on the PATH.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}
