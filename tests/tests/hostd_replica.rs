//! hostd holding a replica of the log, as the architecture has every host do: it joins
//! the cluster as a raft learner, follows the log to the very state the control replica
//! has, runs the domains placed on it from that local state, and after a SIGKILL comes
//! back on the same data directory as the same learner.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::{drover_bin, free_port, wait_for, Processes};

struct Hostd(Child);

impl Hostd {
    fn start(endpoint: &str, dir: &Path, replica_listen: &str) -> Hostd {
        let log = std::fs::File::options().create(true).append(true).open(dir.join("hostd.log")).unwrap();
        let child = Command::new(drover_bin())
            .args(["--endpoint", endpoint, "hostd", "--name", "h1", "--driver", "fake"])
            // A long tick: passes come from the replica applying events.
            .args(["--tick-ms", "2000", "--vcpus", "8", "--memory-mib", "8192"])
            .args(["--replica-id", "101", "--replica-listen", replica_listen, "--replica-dir"])
            .arg(dir.join("h1-replica"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Hostd(child)
    }

    fn sigkill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn drover(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(drover_bin()).args(["--endpoint", endpoint]).args(args).output().unwrap();
    assert!(out.status.success(), "drover {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_phase(endpoint: &str, domain: &str, phase: &str) {
    wait_for(&format!("{domain} to be {phase}"), Duration::from_secs(30), || async {
        let out = Command::new(drover_bin())
            .args(["--endpoint", endpoint, "--output", "json", "domain", "info", domain])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["phase"] == phase).then_some(())
    })
    .await;
}

/// The learner's applied state equals the leader's (same last index, same hash).
async fn learner_caught_up(client: &raft::client::Client, leader: &str, learner: &str) {
    wait_for("the host's replica to reach the leader's state", Duration::from_secs(30), || async {
        let (l, h) = (client.status(leader).await.ok()?, client.status(learner).await.ok()?);
        (l.last_applied_index == h.last_applied_index && l.state_hash == h.state_hash && l.last_seq > 0)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostd_follows_the_log_as_a_learner_and_runs_its_domains_from_it() {
    let mut cluster = Processes::new();
    let ep = cluster.bootstrap(&[]).await;
    let dir = cluster.dir.path().to_owned();
    let replica = format!("127.0.0.1:{}", free_port());
    let client = raft::client::Client::new(vec![ep.clone()]);
    let hostd = Hostd::start(&ep, &dir, &replica);

    wait_for("h1's replica to join as a learner", Duration::from_secs(30), || async {
        let s = client.status(&ep).await.ok()?;
        (s.learners == [101] && s.voters == [1]).then_some(())
    })
    .await;
    // The leader lists the learner before the learner has heard from it: wait for that.
    wait_for("the host's replica to follow the leader", Duration::from_secs(30), || async {
        let status = client.status(&replica).await.ok()?;
        assert_eq!(status.node_id, 101);
        (status.leader_id == 1).then_some(())
    })
    .await;

    wait_for("h1 to be ready", Duration::from_secs(30), || async {
        drover(&ep, &["host", "list"])
            .lines()
            .any(|l| l.starts_with("h1 ") && l.contains(" ready "))
            .then_some(())
    })
    .await;
    let spec = dir.join("web.yaml");
    std::fs::write(&spec, "vcpus: 1\nmemory_mib: 64\nkernel: /images/guest.elf\n").unwrap();
    drover(&ep, &["domain", "define", "web", "--file", spec.to_str().unwrap()]);
    drover(&ep, &["domain", "start", "web"]);
    wait_phase(&ep, "web", "running").await;
    learner_caught_up(&client, &ep, &replica).await;

    // SIGKILL: the next hostd reopens the same replica, rejoins as the same learner, and
    // runs the domain again (the fake hypervisor's VMs die with the process).
    hostd.sigkill();
    drover(&ep, &["domain", "define", "db", "--file", spec.to_str().unwrap()]);
    let _hostd = Hostd::start(&ep, &dir, &replica);
    drover(&ep, &["domain", "start", "db"]);
    wait_phase(&ep, "db", "running").await;
    wait_phase(&ep, "web", "running").await;
    learner_caught_up(&client, &ep, &replica).await;
    let s = client.status(&ep).await.unwrap();
    assert_eq!((s.voters, s.learners), (vec![1], vec![101]), "the same learner, not a second one");
    let log = std::fs::read_to_string(dir.join("hostd.log")).unwrap();
    assert_eq!(log.matches("the host's replica follows the log").count(), 2, "{log}");
}
