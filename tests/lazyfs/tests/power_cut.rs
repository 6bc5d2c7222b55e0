//! Power-cut tests on a real lazyfs mount. They need root and /dev/fuse, and fail without them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use lazyfs::{CutReport, LazyFs};
use tempfile::TempDir;

/// A mount over a fresh backing directory. Field order is drop order: unmount first.
struct Mounted {
    fs: LazyFs,
    mnt: TempDir,
    backing: TempDir,
}

impl Mounted {
    fn new() -> Mounted {
        assert!(
            rustix::process::geteuid().is_root(),
            "the lazyfs tests need root: lazyfs mounts with mount(2)"
        );
        assert!(Path::new("/dev/fuse").exists(), "the lazyfs tests need /dev/fuse (modprobe fuse)");
        let backing = tempfile::tempdir().expect("a backing dir");
        let mnt = tempfile::tempdir().expect("a mountpoint");
        let fs = LazyFs::mount(backing.path(), mnt.path()).expect("mount lazyfs");
        Mounted { fs, mnt, backing }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mnt.path().join(name)
    }

    fn durable(&self, name: &str) -> Vec<u8> {
        fs::read(self.backing.path().join(name)).expect("read the backing file")
    }
}

#[test]
fn unsynced_appends_are_lost_and_synced_data_stays() {
    let m = Mounted::new();
    let mut f = File::create(m.path("a")).expect("create");
    f.write_all(b"durable").expect("write");
    f.sync_all().expect("fsync");
    f.write_all(b" volatile").expect("write");
    assert_eq!(fs::read(m.path("a")).expect("read"), b"durable volatile");
    assert_eq!(m.durable("a"), b"durable");
    assert_eq!(m.fs.unsynced_bytes(), 9);
    drop(f);
    assert_eq!(m.fs.power_cut(), CutReport { files: 1, bytes: 9 });
    assert_eq!(fs::read(m.path("a")).expect("read"), b"durable");
    assert_eq!(fs::metadata(m.path("a")).expect("stat").len(), 7);
    assert_eq!(m.fs.unsynced_bytes(), 0);
}

#[test]
fn fdatasync_is_a_sync_and_close_is_not() {
    let m = Mounted::new();
    let before = m.fs.syncs();
    let mut f = File::create(m.path("wal")).expect("create");
    f.write_all(b"record 1\n").expect("write");
    f.sync_data().expect("fdatasync");
    assert_eq!(m.fs.syncs(), before + 1);
    f.write_all(b"record 2\n").expect("write");
    drop(f);
    fs::write(m.path("closed"), b"written and closed").expect("write a file");
    assert_eq!(fs::read_to_string(m.path("closed")).expect("read"), "written and closed");
    m.fs.power_cut();
    assert_eq!(fs::read_to_string(m.path("wal")).expect("read"), "record 1\n");
    // The name survives (namespace operations are durable); its data does not.
    assert_eq!(fs::read(m.path("closed")).expect("read"), b"");
    // The mount works after the cut.
    fs::write(m.path("after"), b"x").expect("write after the cut");
    File::open(m.path("after")).expect("open").sync_all().expect("fsync via a read-only handle");
    assert_eq!(m.durable("after"), b"x");
}

#[test]
fn an_unsynced_overwrite_is_undone() {
    let m = Mounted::new();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("db"))
        .expect("open");
    f.write_all_at(&[b'a'; 64], 0).expect("pwrite");
    f.sync_all().expect("fsync");
    f.write_all_at(b"BBBB", 30).expect("pwrite");
    let mut buf = [0; 8];
    f.read_exact_at(&mut buf, 28).expect("pread");
    assert_eq!(&buf, b"aaBBBBaa");
    assert_eq!(m.fs.power_cut(), CutReport { files: 1, bytes: 4 });
    f.read_exact_at(&mut buf, 28).expect("pread after the cut");
    assert_eq!(&buf, b"aaaaaaaa");
    assert_eq!(f.metadata().expect("fstat").len(), 64);
}

#[test]
fn size_changes_renames_and_unlinks() {
    let m = Mounted::new();
    let f = File::create(m.path("log")).expect("create");
    f.write_all_at(b"0123456789", 0).expect("pwrite");
    f.sync_all().expect("fsync");
    f.set_len(4).expect("shrink");
    f.set_len(8).expect("grow");
    assert_eq!(fs::read(m.path("log")).expect("read"), b"0123\0\0\0\0");
    assert_eq!(m.durable("log"), b"0123456789");
    m.fs.power_cut();
    assert_eq!(fs::read(m.path("log")).expect("read"), b"0123456789");
    f.set_len(1 << 20).expect("grow");
    f.sync_data().expect("fdatasync");
    assert_eq!(fs::metadata(m.path("log")).expect("stat").len(), 1 << 20);
    assert_eq!(m.durable("log").len(), 1 << 20);
    drop(f);

    // A rename keeps the pending data with the file, over a replaced target too.
    fs::write(m.path("target"), b"old target").expect("write");
    File::open(m.path("target")).expect("open").sync_all().expect("fsync");
    fs::write(m.path("snap.tmp"), b"snapshot").expect("write");
    fs::rename(m.path("snap.tmp"), m.path("target")).expect("rename");
    assert_eq!(fs::read(m.path("target")).expect("read"), b"snapshot");
    assert_eq!(m.fs.unsynced_bytes(), 8);
    File::open(m.path("target")).expect("open").sync_all().expect("fsync by the new name");
    assert_eq!(m.fs.unsynced_bytes(), 0);
    m.fs.power_cut();
    assert_eq!(fs::read(m.path("target")).expect("read"), b"snapshot");

    // A directory rename carries its files' pending data; unlink drops a file's.
    fs::create_dir(m.path("d")).expect("mkdir");
    fs::write(m.path("d/x"), b"pending").expect("write");
    fs::rename(m.path("d"), m.path("e")).expect("rename a dir");
    assert_eq!(fs::read(m.path("e/x")).expect("read"), b"pending");
    fs::write(m.path("gone"), b"12345").expect("write");
    fs::remove_file(m.path("gone")).expect("unlink");
    assert_eq!(m.fs.power_cut(), CutReport { files: 1, bytes: 7 });
    assert_eq!(fs::read(m.path("e/x")).expect("read"), b"");
    let mut names: Vec<_> =
        fs::read_dir(m.mnt.path()).expect("readdir").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    assert_eq!(names, ["e", "log", "target"]);
    File::open(m.mnt.path()).expect("open the root").sync_all().expect("fsyncdir");
}

#[test]
fn unmount_on_drop_leaves_the_mountpoint_usable() {
    let m = Mounted::new();
    fs::write(m.path("f"), b"x").expect("write");
    let mut f = File::open(m.path("f")).expect("open");
    let Mounted { fs: lazy, mnt, backing } = m;
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read");
    drop(f);
    drop(lazy);
    assert_eq!(fs::read_dir(mnt.path()).expect("readdir the bare mountpoint").count(), 0);
    fs::write(mnt.path().join("plain"), b"y").expect("write to the bare mountpoint");
    assert!(!backing.path().join("plain").exists());
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read mounts");
    assert!(!mounts.contains(mnt.path().to_str().expect("utf-8 path")), "still mounted: {mounts}");
}

#[test]
fn a_busy_mount_is_detached_on_drop() {
    let m = Mounted::new();
    fs::write(m.path("f"), b"still readable").expect("write");
    let f = File::open(m.path("f")).expect("open");
    let Mounted { fs: lazy, mnt, backing: _backing } = m;
    drop(lazy);
    // The open file keeps the detached mount (and its session thread) alive.
    let mut buf = [0; 5];
    f.read_exact_at(&mut buf, 0).expect("read from the detached mount");
    assert_eq!(&buf, b"still");
    assert_eq!(fs::read_dir(mnt.path()).expect("readdir the bare mountpoint").count(), 0);
    drop(f);
}

#[test]
fn fallocate_and_tempfiles() {
    use rustix::fs::{fallocate, FallocateFlags};
    let m = Mounted::new();
    let f = File::create(m.path("wal")).expect("create");
    fallocate(&f, FallocateFlags::empty(), 0, 4096).expect("fallocate");
    fallocate(&f, FallocateFlags::KEEP_SIZE, 0, 1 << 20).expect("fallocate, keep size");
    let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    assert_eq!(fallocate(&f, punch, 0, 10), Err(rustix::io::Errno::OPNOTSUPP));
    assert_eq!(f.metadata().expect("fstat").len(), 4096);
    assert_eq!(m.durable("wal").len(), 0);
    m.fs.power_cut();
    assert_eq!(f.metadata().expect("fstat").len(), 0);

    // An unnamed temp file (O_TMPFILE, or create and unlink where FUSE lacks it) and a
    // named one persisted over a target.
    let mut t = tempfile::tempfile_in(m.mnt.path()).expect("an unnamed temp file");
    t.write_all(b"scratch").expect("write");
    t.sync_all().expect("fsync");
    let mut named = tempfile::NamedTempFile::new_in(m.mnt.path()).expect("a named temp file");
    named.write_all(b"conf v2").expect("write");
    named.as_file().sync_all().expect("fsync");
    named.persist(m.path("conf")).expect("persist");
    m.fs.power_cut();
    assert_eq!(fs::read_to_string(m.path("conf")).expect("read"), "conf v2");
}
