//! The proto is the contract for other languages: a Python grpcio client, with stubs
//! generated from `proto/` at run time, defines, starts and lists a domain, in plain text
//! and over mutual TLS. `scripts/test`
//! installs grpcio and grpcio-tools; without them this test fails and says so.

use std::process::Command;

use tests::Processes;

/// Run `client_test.py` against a new cluster, over mutual TLS with `tls`.
async fn python_client(tls: bool) {
    let have = Command::new("python3").args(["-c", "import grpc, grpc_tools"]).status();
    assert!(
        have.is_ok_and(|s| s.success()),
        "python3 with grpcio and grpcio-tools is needed (scripts/test installs them: pip install grpcio grpcio-tools)"
    );
    let mut p = if tls { Processes::new().with_tls() } else { Processes::new() };
    let a1 = p.bootstrap(tests::NO_HOSTD).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/client_test.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(&a1);
    if let Some(pki) = &p.pki {
        command.arg(&pki.user_dir);
    }
    let out = command.output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("define, start and list ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_defines_starts_and_lists() {
    python_client(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpcio_client_does_the_same_over_mutual_tls() {
    python_client(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_that_only_knows_reflection_lists_services_and_calls_domains_list() {
    let have = Command::new("python3").args(["-c", "import grpc, grpc_reflection"]).status();
    assert!(
        have.is_ok_and(|s| s.success()),
        "python3 with grpcio-reflection is needed (scripts/test installs it: pip install grpcio-reflection)"
    );
    let mut p = Processes::new();
    let a1 = p.bootstrap(tests::NO_HOSTD).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/reflection_test.py");
    let out = Command::new("python3").arg(script).arg(&a1).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("reflection ok"), "{stdout}");
}
