//! The `drover` CLI against a real replica: define, start, list, shut down and undefine a
//! domain; errors exit non-zero with the gRPC code.

use std::process::Command;

use controlplane::model::ObservedPhase;
use proto::api as pb;
use proto::api::hosts_client::HostsClient;
use tests::{drover_bin, Processes};

fn drover(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(drover_bin()).args(["--endpoint", endpoint]).args(args).output().expect("drover runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn define_start_list_shutdown_undefine() {
    let mut p = Processes::new();
    let a1 = p.bootstrap(tests::NO_HOSTD).await;
    // A host registers itself (as hostd will).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{a1}")).unwrap().connect_lazy();
    HostsClient::new(channel)
        .register(pb::RegisterHostRequest {
            request_id: "h1".into(),
            name: "h1".into(),
            address: "127.0.0.1:9101".into(),
            capacity: Some(pb::Resources { vcpus: 4, memory_mib: 4096 }),
            labels: Default::default(),
            vm_limits: None,
        })
        .await
        .unwrap();
    let spec = p.dir.path().join("web.toml");
    std::fs::write(
        &spec,
        "vcpus = 1\nmemory_mib = 256\nkernel = \"/var/lib/drover/vmlinux\"\ncmdline = \"console=ttyS0\"\n",
    )
    .unwrap();

    let (ok, _, err) = drover(&a1, &["host", "ready", "h1"]);
    assert!(ok, "{err}");
    let (ok, out, err) = drover(&a1, &["domain", "define", "web", "--file", spec.to_str().unwrap()]);
    assert!(ok && out.contains("domain web defined"), "{out}{err}");
    let (ok, out, err) = drover(&a1, &["domain", "start", "web"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = drover(&a1, &["domain", "list"]);
    assert!(ok);
    let row = out.lines().find(|l| l.starts_with("web ")).expect("web is listed");
    assert!(row.contains("running") && row.contains("scheduled") && row.contains("h1"), "{row}");
    let (ok, out, _) = drover(&a1, &["--output", "json", "domain", "info", "web"]);
    assert!(ok);
    let info: serde_json::Value = serde_json::from_str(&out).expect("json output parses");
    assert_eq!(info["host"], "h1");

    // Starting it again is refused: non-zero exit and the gRPC code.
    let (ok, _, err) = drover(&a1, &["domain", "start", "web"]);
    assert!(!ok);
    assert!(err.contains("FailedPrecondition") && err.contains("already running"), "{err}");
    let (ok, _, err) = drover(&a1, &["domain", "undefine", "web"]);
    assert!(!ok && err.contains("is active"), "{err}");

    let (ok, _, err) = drover(&a1, &["domain", "shutdown", "web"]);
    assert!(ok, "{err}");
    // The host reports the VM stopped (what hostd does), which frees the placement.
    let client = raft::client::Client::new(vec![a1.clone()]);
    let report = controlplane::Request {
        request_id: "obs-1".into(),
        principal: "host/h1".into(),
        caller: controlplane::Caller::Host("h1".into()),
        command: controlplane::Command::ReportObservation {
            domain: "web".into(),
            host: "h1".into(),
            generation: 1,
            phase: ObservedPhase::Stopped,
            reason: None,
        },
    };
    client.submit(&report).await.unwrap();
    let (ok, out, err) = drover(&a1, &["domain", "undefine", "web"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = drover(&a1, &["domain", "list"]);
    assert!(ok && !out.contains("web"), "{out}");

    // The audit trail names who did what.
    let (ok, out, _) = drover(&a1, &["audit", "log", "--kind", "domain", "--name", "web"]);
    assert!(ok);
    assert!(
        out.contains("DomainShutdownRequested") && out.contains("cli") && out.contains("host/h1"),
        "{out}"
    );
    let (ok, out, _) = drover(&a1, &["audit", "verify"]);
    assert!(ok && out.starts_with("verify ok"), "{out}");
}
