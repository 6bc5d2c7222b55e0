//! Traces, as an operator collects them: an OTLP receiver (the collector's trace service
//! from the OpenTelemetry protos, `tests::otlp`) on loopback, and a `drover up` cluster
//! and the CLI exporting to it (`OTEL_EXPORTER_OTLP_ENDPOINT`, `--otlp-endpoint`). One
//! `drover domain start --wait` makes one trace: the CLI's call, the API call on a
//! replica, the leader's decision and commit, the apply on every replica and on the
//! hosts' learners, the host's reconcile pass and its driver call, and the guest's boot
//! until its first console output, with every parent link intact.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::otlp::{Receiver, Span};
use tests::{drover_bin, free_run, wait_for, UpCluster};

/// The spans of the trace rooted at the CLI's `drover domain start`, once they are all
/// there: `None` until then.
fn start_trace(spans: &[Span], kvm: bool) -> Option<Vec<Span>> {
    let root = spans.iter().find(|s| s.service == "drover-cli" && s.name == "drover domain start")?;
    let trace: Vec<Span> = spans.iter().filter(|s| s.trace_id == root.trace_id).cloned().collect();
    let named =
        |service: &str, name: &str| trace.iter().filter(|s| s.service == service && s.name == name).count();
    let applied_by: BTreeSet<(&str, &str)> = trace
        .iter()
        .filter(|s| s.name == "apply")
        .map(|s| (s.service.as_str(), s.instance.as_str()))
        .collect();
    let servers_applied = applied_by.iter().filter(|(s, _)| *s == "drover-server").count();
    let hosts_applied = applied_by.iter().filter(|(s, _)| *s == "drover-hostd").count();
    let booted =
        trace.iter().any(|s| s.name == "guest.boot" && (!kvm || s.attribute("console") == Some("output")));
    let complete = named("drover-server", "/drover.api.v1.Domains/Start") >= 1
        && named("drover-server", "propose") >= 1
        && named("drover-server", "decide") >= 1
        && named("drover-server", "commit") >= 1
        && servers_applied == 3
        && hosts_applied == 3
        && named("drover-hostd", "reconcile") >= 1
        && named("drover-hostd", "driver.start") == 1
        && booted;
    complete.then_some(trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_start_from_the_cli_to_the_guest() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A cluster takes base..=base+6 (learners from base+4), its peer ports three more,
    // its metrics six more.
    let (base, peer_base, metrics_base) = (free_run(7), free_run(3), free_run(6));
    let _up = UpCluster(
        Command::new(drover_bin())
            .args(["up", "--no-user-config", "--data-dir"])
            .arg(dir.path().join("cluster"))
            .args(["--base-port", &base.to_string(), "--metrics-base-port", &metrics_base.to_string()])
            .args(["--peer-base-port", &peer_base.to_string()])
            .args(["--otlp-endpoint", &receiver.endpoint()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("drover up starts"),
    );
    let config = tests::up_config(&dir.path().join("cluster"));
    tests::wait_ready_hosts(&config, 3).await;
    let kvm = vmm::kvm_present_for("a traced start of a guest under the own VMM");
    let spec = dir.path().join("cluster/hello.yaml");
    let cli = |args: &[&str]| {
        let out = tests::drover_command()
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
            .output()
            .expect("drover runs");
        assert!(out.status.success(), "drover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    cli(&["domain", "define", "web", "--file", spec.to_str().unwrap()]);
    let said = cli(&["--log", "info", "domain", "start", "web", "--wait"]);
    assert!(!said.contains('\u{1b}'), "piped logs carry no escape codes: {said:?}");

    let trace = wait_for("the start's whole trace", Duration::from_secs(60), || {
        let spans = receiver.spans();
        async move { start_trace(&spans, kvm) }
    })
    .await;
    // Every span's parent is a span of the same trace that arrived: the links are intact
    // across processes (metadata) and across the log (the proposal's trace context).
    let ids: BTreeMap<&[u8], &Span> = trace.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let roots: Vec<&Span> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    assert_eq!((roots[0].service.as_str(), roots[0].name.as_str()), ("drover-cli", "drover domain start"));
    for span in &trace {
        if !span.parent_span_id.is_empty() {
            assert!(
                ids.contains_key(span.parent_span_id.as_slice()),
                "{} {} has a parent that is not in the trace",
                span.service,
                span.name
            );
        }
    }
    let parent_of = |s: &Span| ids[s.parent_span_id.as_slice()];
    // The chain, by parent: the driver's start is in a host's reconcile pass, which
    // continues that host's apply, which continues the leader's commit.
    let start = trace.iter().find(|s| s.name == "driver.start").unwrap();
    let reconcile = parent_of(start);
    assert_eq!((reconcile.service.as_str(), reconcile.name.as_str()), ("drover-hostd", "reconcile"));
    let apply = parent_of(reconcile);
    assert_eq!((apply.service.as_str(), apply.name.as_str()), ("drover-hostd", "apply"));
    assert_eq!(apply.instance, reconcile.instance, "the host continues its own replica's apply");
    let commit = parent_of(apply);
    assert_eq!((commit.service.as_str(), commit.name.as_str()), ("drover-server", "commit"));
    assert_eq!(parent_of(commit).name, "propose");
    assert_eq!(parent_of(start).span_id, reconcile.span_id);
    let boot = trace.iter().find(|s| s.name == "guest.boot").unwrap();
    assert_eq!(parent_of(boot).span_id, reconcile.span_id);
    assert_eq!(boot.attribute("domain"), Some("web"));
    // The server's log lines in the call carry the trace id.
    let trace_hex: String = roots[0].trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let call = trace.iter().find(|s| s.name == "/drover.api.v1.Domains/Start").unwrap();
    assert_eq!(call.attribute("trace_id"), Some(trace_hex.as_str()));
    assert_eq!(call.attribute("rpc.grpc.status_code"), Some("0"));
    // The host's log line for the start carries the trace id, as the span's field.
    let host_log =
        std::fs::read_to_string(dir.path().join(format!("cluster/logs/{}.log", reconcile.instance)))
            .expect("the host's log");
    assert!(
        host_log.lines().any(|l| l.contains(&format!("trace_id={trace_hex}")) && l.contains("started")),
        "no line of {}'s log carries trace {trace_hex}",
        reconcile.instance
    );
    // Only Drover's own spans: none of its dependencies' (openraft's, h2's).
    let foreign: Vec<_> = trace
        .iter()
        .filter(|s| {
            !s.attribute("target")
                .is_some_and(|t| ["drover", "api::", "raft::", "hostd::"].iter().any(|p| t.starts_with(p)))
        })
        .map(|s| &s.name)
        .collect();
    assert!(foreign.is_empty(), "spans of dependencies: {foreign:?}");
    cli(&["domain", "destroy", "web"]);
}
