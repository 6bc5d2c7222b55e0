//! Damaged storage: a corrupted, truncated or partly missing data directory makes the
//! replica refuse to start with a clear error (damage only in space the database no
//! longer uses may leave it whole, and then it must serve exactly what it held). It never
//! comes up silently empty or behind.

use std::path::Path;
use std::time::Duration;

use raft::client::Client;
use tests::{define_request, wait_for, Processes};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A stopped single-replica cluster's data directory holding `writes` events.
async fn populated(p: &mut Processes, writes: usize) -> (String, std::path::PathBuf) {
    let addr = p.bootstrap(&["--snapshot-every", "100", "--log-kept", "10"]).await;
    let client = Client::new(vec![addr.clone()]);
    for i in 0..writes {
        let name = format!("d{i}");
        let r = define_request(&name, "t");
        client.submit(&r).await.unwrap();
    }
    let status = client.status(&addr).await.unwrap();
    assert!(status.snapshot_index > 0, "a snapshot was taken");
    let hash = status.state_hash;
    p.kill(1);
    (hash, p.replicas[&1].data_dir.clone())
}

/// Start replica 1 on a copy of `dir` and expect it to exit with an error naming the damage.
fn refuses(p: &mut Processes, dir: &Path, case: &str) {
    let target = p.replicas[&1].data_dir.clone();
    std::fs::remove_dir_all(&target).unwrap();
    copy_dir(dir, &target);
    p.start(1, &[]);
    let status = p.wait_exit(1, Duration::from_secs(30));
    assert!(!status.success(), "{case}: the replica started on a damaged directory");
    let log = p.log_of(1);
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("damaged"), "{case}: no clear error, the log ends:\n{last}");
    eprintln!("{case}: {last}");
}

/// Start replica 1 on a copy of `dir` whose damage may lie only in space sled no longer
/// uses (its file keeps dead segments, which recovery does not read): it refuses to start
/// with an error naming the damage, or it serves exactly the state it held (`hash`, every
/// write). Coming up with anything else fails.
async fn refuses_or_is_whole(p: &mut Processes, dir: &Path, case: &str, hash: &str) {
    let target = p.replicas[&1].data_dir.clone();
    std::fs::remove_dir_all(&target).unwrap();
    copy_dir(dir, &target);
    let addr = p.start(1, &[]);
    let client = Client::new(vec![addr.clone()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = p.exited(1) {
            assert!(!status.success(), "{case}: the replica exited without an error");
            let log = p.log_of(1);
            let last = log.lines().last().unwrap_or_default();
            assert!(last.contains("damaged"), "{case}: no clear error, the log ends:\n{last}");
            eprintln!("{case}: {last}");
            return;
        }
        if let Ok(s) = client.status(&addr).await {
            if s.last_seq > 0 {
                assert_eq!(s.state_hash, hash, "{case}: the replica came up with another state");
                eprintln!("{case}: the damage was in space sled no longer used; the state is whole");
                p.kill(1);
                return;
            }
        }
        assert!(std::time::Instant::now() < deadline, "{case}: neither refused nor served within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_data_directories_are_refused() {
    let mut p = Processes::new();
    let (hash, dir) = populated(&mut p, 300).await;
    let work = p.dir.path().join("copies");

    // Control: an intact copy starts and holds the same state.
    let intact = work.join("intact");
    copy_dir(&dir, &intact);
    let addr = p.start(1, &[]);
    let client = Client::new(vec![addr.clone()]);
    let restored = wait_for("the intact replica to serve", Duration::from_secs(30), || async {
        client.status(&addr).await.ok().filter(|s| s.last_seq == 300).map(|s| s.state_hash)
    })
    .await;
    assert_eq!(restored, hash);
    p.kill(1);

    let db_file = |d: &Path| d.join("db").join("db");

    let case = work.join("truncated");
    copy_dir(&intact, &case);
    let len = std::fs::metadata(db_file(&case)).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(db_file(&case)).unwrap().set_len(len / 3).unwrap();
    refuses(&mut p, &case, "truncated database");

    let case = work.join("emptied");
    copy_dir(&intact, &case);
    std::fs::OpenOptions::new().write(true).open(db_file(&case)).unwrap().set_len(0).unwrap();
    refuses(&mut p, &case, "emptied database");

    let case = work.join("corrupted");
    copy_dir(&intact, &case);
    let mut bytes = std::fs::read(db_file(&case)).unwrap();
    // Scramble the second half: whatever sled wrote last (the newest snapshot among it)
    // is garbage now, wherever it sits in that half.
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..] {
        *b ^= 0x5a;
    }
    std::fs::write(db_file(&case), bytes).unwrap();
    refuses_or_is_whole(&mut p, &case, "corrupted database", &hash).await;

    let case = work.join("no-db");
    copy_dir(&intact, &case);
    std::fs::remove_dir_all(case.join("db")).unwrap();
    refuses(&mut p, &case, "missing database");

    let segment = |d: &Path| {
        let mut segments: Vec<_> =
            std::fs::read_dir(d.join("log")).unwrap().map(|e| e.unwrap().path()).collect();
        segments.sort();
        segments.pop().expect("the log has a segment")
    };

    let case = work.join("no-log");
    copy_dir(&intact, &case);
    std::fs::remove_dir_all(case.join("log")).unwrap();
    refuses(&mut p, &case, "missing log");

    let case = work.join("truncated-log");
    copy_dir(&intact, &case);
    let len = std::fs::metadata(segment(&case)).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(segment(&case)).unwrap().set_len(len / 2).unwrap();
    refuses(&mut p, &case, "truncated log segment");

    let case = work.join("emptied-log");
    copy_dir(&intact, &case);
    std::fs::OpenOptions::new().write(true).open(segment(&case)).unwrap().set_len(0).unwrap();
    refuses(&mut p, &case, "emptied log segment");

    let case = work.join("no-archive");
    copy_dir(&intact, &case);
    std::fs::remove_dir_all(case.join("archive")).unwrap();
    refuses(&mut p, &case, "missing archive");

    let case = work.join("emptied-archive");
    copy_dir(&intact, &case);
    std::fs::OpenOptions::new()
        .write(true)
        .open(case.join("archive").join("db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    refuses(&mut p, &case, "emptied archive");

    let case = work.join("no-identity");
    copy_dir(&intact, &case);
    std::fs::remove_file(case.join("IDENTITY")).unwrap();
    refuses(&mut p, &case, "missing identity file");

    // A directory in another storage format (an older build's) is refused, not misread.
    let case = work.join("old-format");
    copy_dir(&intact, &case);
    let identity = std::fs::read_to_string(case.join("IDENTITY")).unwrap();
    let (first, rest) = identity.split_once('\n').unwrap();
    assert!(first.starts_with("drover-data-dir v"), "{first}");
    std::fs::write(case.join("IDENTITY"), format!("drover-data-dir v1\n{rest}")).unwrap();
    refuses(&mut p, &case, "older storage format");
}
