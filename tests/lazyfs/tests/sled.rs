//! Can lazyfs catch sled 0.34's durability gap? `Db::flush` writes with `pwrite` and
//! `sync_file_range`, which never reaches a FUSE filesystem, so flushed data stays volatile
//! until sled fsyncs the file (its flusher thread, a segment truncation, or a clean drop: the
//! log's `Drop` fsyncs). A crash is a killed process, so the writer runs in a child process
//! (this test binary again, running `sled_writer_child`) and is killed with SIGKILL.
//! Needs root and /dev/fuse, like the other lazyfs tests.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use lazyfs::LazyFs;

/// Where the child opens its db; set only in the child.
const CHILD_DIR: &str = "LAZYFS_SLED_CHILD_DIR";
/// "1" if the child fsyncs the db file after `flush()`.
const CHILD_FSYNC: &str = "LAZYFS_SLED_CHILD_FSYNC";
/// The child's line once its keys are flushed.
const FLUSHED: &str = "lazyfs-sled-child: flushed";
/// How long the child waits to be killed before it aborts by itself.
const CHILD_MAX_LIFE: std::time::Duration = std::time::Duration::from_secs(60);
/// Keys made durable by a clean close before the crash, and keys written by the child.
const DURABLE_KEYS: u32 = 100;
const CHILD_KEYS: u32 = 100;
const VALUE: [u8; 100] = [7; 100];

fn open(dir: &Path) -> sled::Result<sled::Db> {
    sled::Config::new().path(dir).flush_every_ms(None).open()
}

fn present(db: &sled::Db, keys: std::ops::Range<u32>) -> usize {
    keys.filter(|k| db.get(k.to_be_bytes()).expect("get").is_some()).count()
}

/// Not a test by itself: the body of the child process that the tests below start and kill.
#[test]
fn sled_writer_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else { return };
    let db = open(Path::new(&dir)).expect("the child opens the db");
    for k in DURABLE_KEYS..DURABLE_KEYS + CHILD_KEYS {
        db.insert(k.to_be_bytes(), &VALUE[..]).expect("insert");
    }
    assert!(db.flush().expect("flush") > 0, "flush wrote nothing");
    if std::env::var(CHILD_FSYNC).as_deref() == Ok("1") {
        std::fs::File::open(Path::new(&dir).join("db")).expect("open db").sync_all().expect("fsync db");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{FLUSHED}").expect("stdout");
    out.flush().expect("stdout");
    // The parent kills this process; if it never does, do not linger.
    std::thread::sleep(CHILD_MAX_LIFE);
    std::process::abort();
}

/// Writes durable keys (clean close), then child keys that are flushed but whose writer is
/// killed, cuts the power and reopens. Returns (durable keys present, child keys present).
fn crash_after_flush(fsync_after_flush: bool) -> (usize, usize) {
    assert!(rustix::process::geteuid().is_root(), "the lazyfs tests need root: lazyfs mounts with mount(2)");
    assert!(Path::new("/dev/fuse").exists(), "the lazyfs tests need /dev/fuse (modprobe fuse)");
    let backing = tempfile::tempdir().expect("a backing dir");
    let mnt = tempfile::tempdir().expect("a mountpoint");
    let fs = LazyFs::mount(backing.path(), mnt.path()).expect("mount lazyfs");
    let dir = mnt.path().join("sled");

    let db = open(&dir).expect("open");
    // sled's flock on `db`: FUSE does not forward locks, so the kernel keeps them locally.
    let locked = open(&dir).map(drop).expect_err("a second open must find the db locked");
    assert!(locked.to_string().contains("could not acquire lock"), "{locked}");
    for k in 0..DURABLE_KEYS {
        db.insert(k.to_be_bytes(), &VALUE[..]).expect("insert");
    }
    drop(db); // sled's Log::drop fsyncs the db file; sled never fsyncs `conf`.
    let (syncs, unsynced) = (fs.syncs(), fs.unsynced_bytes());
    eprintln!("after a clean close: {syncs} syncs, {unsynced} bytes unsynced");

    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["sled_writer_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, &dir)
        .env(CHILD_FSYNC, if fsync_after_flush { "1" } else { "0" })
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let flushed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test sled_writer_child ... " on the same line.
        .any(|line| line.contains(FLUSHED));
    child.kill().expect("kill the child");
    child.wait().expect("reap the child");
    assert!(flushed, "the child ended before flushing (see its output above)");
    let unsynced = fs.unsynced_bytes();
    eprintln!("child flushed and was killed: {} syncs by it, {unsynced} bytes unsynced", fs.syncs() - syncs);
    let cut = fs.power_cut();
    eprintln!("power cut dropped {cut:?}");

    let db = open(&dir).expect("sled reopens after the cut");
    let seen = (present(&db, 0..DURABLE_KEYS), present(&db, DURABLE_KEYS..DURABLE_KEYS + CHILD_KEYS));
    eprintln!(
        "after the cut: {} of {DURABLE_KEYS} durable keys, {} of {CHILD_KEYS} flushed keys",
        seen.0, seen.1
    );
    drop(db);
    drop(fs);
    seen
}

#[test]
fn sled_flush_alone_is_not_durable() {
    let (durable, flushed) = crash_after_flush(false);
    assert_eq!(durable, DURABLE_KEYS as usize, "keys fsynced by a clean close must survive");
    assert!(flushed < CHILD_KEYS as usize, "every key acknowledged by flush() survived: the gap went unseen");
}

#[test]
fn sled_flush_then_fsync_is_durable() {
    let (durable, flushed) = crash_after_flush(true);
    assert_eq!((durable, flushed), (DURABLE_KEYS as usize, CHILD_KEYS as usize));
}
