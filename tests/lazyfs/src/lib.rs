//! lazyfs: a FUSE filesystem that forgets unsynced file data on a simulated power cut.
//!
//! It exists for power-loss tests (the technique of Jepsen's LazyFS): a store under test runs
//! on a [`LazyFs`] mount, the test kills it, calls [`LazyFs::power_cut`], and reopens it. Data
//! that was written but never made durable with `fsync`/`fdatasync` of its file is gone, so a
//! store that acknowledges a write before syncing it is caught.
//!
//! Contract:
//! - Every file's data writes and size changes (`write`, `truncate`/`set_len`, a growing
//!   `fallocate`, `O_TRUNC`) are kept in memory per inode; the backing file is untouched.
//!   Reads and `stat` see them, as a page cache would.
//! - `fsync` and `fdatasync` of a file apply its pending changes to the backing file, in effect
//!   in order, then fsync the backing file. `O_SYNC`/`O_DSYNC` writes do the same at once.
//!   `close` is not a sync, and `sync_file_range` never reaches a FUSE filesystem, so data it
//!   "synced" stays volatile.
//! - [`LazyFs::power_cut`] drops every pending change of every file. The mount stays usable.
//! - Files are opened with `FOPEN_DIRECT_IO` and attributes and entries are not cached
//!   (`TTL` zero), so the kernel holds no copy of data or sizes that a cut should drop.
//!
//! Limits:
//! - Directory entries are not modelled as volatile: create, mkdir, unlink, rmdir, rename and
//!   symlink are carried out on the backing directory at once and survive a cut. So do mode,
//!   owner and time changes. `fsync` of a directory syncs the backing directory and is counted.
//! - No hard links (`link` fails with `EPERM`), no xattrs, no `RENAME_EXCHANGE`, and
//!   `fallocate` only with mode 0 or `FALLOC_FL_KEEP_SIZE`. Shared writable `mmap` is refused
//!   by the kernel under direct IO.
//! - Locks (`flock`, `fcntl`) are done by the kernel locally; they are not forwarded.
//! - One session thread serves every request; state sits behind one mutex.
//! - Needs root and `/dev/fuse`: it mounts with mount(2), not fusermount, with
//!   `default_permissions` (the kernel checks modes) and `allow_other`. Inode numbers are the
//!   filesystem's own (by path relative to the backing root), never reused nor forgotten.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL,
    TimeOrNow, WriteFlags,
};

/// How long the kernel may cache attributes and directory entries: not at all, so that sizes
/// are fresh after a cut.
const TTL: Duration = Duration::ZERO;
/// The root directory's inode number (FUSE's).
const ROOT: u64 = 1;
/// The name the mount shows in /proc/mounts.
const FS_NAME: &str = "lazyfs";
/// The FUSE device; without it nothing can be mounted.
const DEV_FUSE: &str = "/dev/fuse";
/// Open flags that make every write durable by itself.
const SYNC_FLAGS: i32 = libc::O_SYNC | libc::O_DSYNC;

/// What a power cut threw away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced writes or size changes.
    pub files: usize,
    /// Unsynced bytes written to them.
    pub bytes: u64,
}

/// A mounted lazyfs. Dropping it unmounts (lazily if the mount is busy).
#[derive(Debug)]
pub struct LazyFs {
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl LazyFs {
    /// Mount a filesystem at `mountpoint` whose durable contents live in `backing` (an existing
    /// directory). Needs root and /dev/fuse.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LazyFs> {
        if !rustix::process::geteuid().is_root() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "lazyfs must run as root: it mounts with mount(2), not fusermount",
            ));
        }
        if !Path::new(DEV_FUSE).exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("lazyfs needs {DEV_FUSE}")));
        }
        let backing = backing.canonicalize()?;
        if !backing.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "lazyfs: backing is not a directory"));
        }
        let mountpoint = mountpoint.canonicalize()?;
        let state = Arc::new(Mutex::new(State::new(backing)));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName(FS_NAME.into()), MountOption::DefaultPermissions];
        config.acl = SessionACL::All;
        let session = fuser::spawn_mount(Fs { state: state.clone() }, &mountpoint, &config).map_err(|e| {
            io::Error::new(e.kind(), format!("lazyfs: mounting at {}: {e}", mountpoint.display()))
        })?;
        Ok(LazyFs { state, session: Some(session), mountpoint })
    }

    /// A power cut: every file's data writes and size changes not yet made durable by an
    /// fsync/fdatasync of that file are thrown away. Returns what was dropped.
    pub fn power_cut(&self) -> CutReport {
        let mut st = lock(&self.state);
        let report = CutReport { files: st.pending.len(), bytes: st.unsynced_bytes() };
        st.pending.clear();
        report
    }

    /// Bytes written and not yet synced, over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        lock(&self.state).unsynced_bytes()
    }

    /// How many fsync/fdatasync requests (of files and directories) the filesystem has served.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // A plain unmount, then the session thread is joined. If the mount is busy, detach
            // it; the kernel ends the session (and its thread) when the last user lets go.
            if session.umount_and_join().is_err() {
                let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One file's unsynced changes. The file reads as: the backing file up to `low_water` (the
/// smallest size it was cut to), zeros after that, with `extents` laid over it, `size` long.
/// Applying that to the backing file gives the same result as replaying the changes in order.
#[derive(Debug)]
struct Pending {
    size: u64,
    low_water: u64,
    /// Written data by offset; extents neither overlap nor reach past `size`.
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Pending {
    fn new(len: u64) -> Pending {
        Pending { size: len, low_water: len, extents: BTreeMap::new() }
    }

    fn bytes(&self) -> u64 {
        self.extents.values().map(|v| v.len() as u64).sum()
    }

    fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        self.size = self.size.max(end);
        // The extent that starts at or before `off`: overwrite in place, or extend it (appends).
        let mut start = off;
        let mut buf = Vec::new();
        if let Some((&s, v)) = self.extents.range_mut(..=off).next_back() {
            let v_end = s + v.len() as u64;
            if end <= v_end {
                let at = (off - s) as usize;
                v[at..at + data.len()].copy_from_slice(data);
                return;
            }
            if v_end >= off {
                buf = self.extents.remove(&s).expect("the extent was just found");
                buf.truncate((off - s) as usize);
                start = s;
            }
        }
        buf.extend_from_slice(data);
        let later: Vec<u64> = self.extents.range(off + 1..end).map(|(&s, _)| s).collect();
        for s in later {
            let v = self.extents.remove(&s).expect("the extent was just found");
            if s + v.len() as u64 > end {
                buf.extend_from_slice(&v[(end - s) as usize..]);
            }
        }
        self.extents.insert(start, buf);
    }

    fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.low_water = self.low_water.min(size);
            let _beyond = self.extents.split_off(&size);
            if let Some((&s, v)) = self.extents.range_mut(..size).next_back() {
                v.truncate(v.len().min((size - s) as usize));
            }
        }
        self.size = size;
    }

    fn read(&self, file: &File, off: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = self.size.min(off.saturating_add(len));
        if off >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; (end - off) as usize];
        let durable_end = end.min(self.low_water);
        if off < durable_end {
            read_full(file, off, &mut buf[..(durable_end - off) as usize])?;
        }
        for (&s, v) in self.extents.range(..end).rev() {
            let v_end = s + v.len() as u64;
            if v_end <= off {
                break;
            }
            let (from, to) = (s.max(off), v_end.min(end));
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&v[(from - s) as usize..(to - s) as usize]);
        }
        Ok(buf)
    }

    fn apply(&self, file: &File) -> io::Result<()> {
        if file.metadata()?.len() > self.low_water {
            file.set_len(self.low_water)?;
        }
        for (&s, v) in &self.extents {
            file.write_all_at(v, s)?;
        }
        if file.metadata()?.len() != self.size {
            file.set_len(self.size)?;
        }
        Ok(())
    }
}

/// Reads into `buf` until it is full or the file ends; the rest stays as it was.
fn read_full(file: &File, off: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn enoent() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

#[derive(Debug)]
struct State {
    backing: PathBuf,
    /// Inode number to path relative to `backing` ("" is the root), and back.
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    /// Open files (the backing file, read-write where allowed) and directory listings by handle.
    files: HashMap<u64, File>,
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    pending: HashMap<u64, Pending>,
    syncs: u64,
}

impl State {
    fn new(backing: PathBuf) -> State {
        let mut st = State {
            backing,
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: ROOT + 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            pending: HashMap::new(),
            syncs: 0,
        };
        st.paths.insert(ROOT, PathBuf::new());
        st.inos.insert(PathBuf::new(), ROOT);
        st
    }

    fn unsynced_bytes(&self) -> u64 {
        self.pending.values().map(Pending::bytes).sum()
    }

    fn rel(&self, ino: INodeNo) -> io::Result<&Path> {
        self.paths.get(&ino.0).map(PathBuf::as_path).ok_or_else(enoent)
    }

    fn path(&self, ino: INodeNo) -> io::Result<PathBuf> {
        Ok(self.backing.join(self.rel(ino)?))
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> io::Result<PathBuf> {
        Ok(self.rel(parent)?.join(name))
    }

    fn ino_of(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(ino, rel.to_path_buf());
        self.inos.insert(rel.to_path_buf(), ino);
        ino
    }

    /// Forgets a path that no longer exists, and the unsynced data of its file.
    fn drop_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.remove(&ino);
            self.pending.remove(&ino);
        }
    }

    /// Renames `from` (and everything under it) to `to` in the inode map.
    fn move_path(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(u64, PathBuf)> =
            self.paths.iter().filter(|(_, p)| p.starts_with(from)).map(|(&i, p)| (i, p.clone())).collect();
        for (ino, old) in moved {
            let rest = old.strip_prefix(from).expect("filtered on this prefix");
            // `to.join("")` would add a trailing slash, which makes a file's path fail.
            let new = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            self.inos.remove(&old);
            self.inos.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
    }

    /// Runs `f` on the open backing file of `fh`, or on the file at the inode's path.
    fn with_file<T>(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        write: bool,
        f: impl FnOnce(&File) -> io::Result<T>,
    ) -> io::Result<T> {
        match fh.and_then(|fh| self.files.get(&fh.0)) {
            Some(file) => f(file),
            None => f(&OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_NONBLOCK)
                .open(self.path(ino)?)?),
        }
    }

    fn attr(&mut self, ino: INodeNo, fh: Option<FileHandle>) -> io::Result<FileAttr> {
        let meta = match fh.and_then(|fh| self.files.get(&fh.0)) {
            Some(file) => file.metadata()?,
            None => fs::symlink_metadata(self.path(ino)?)?,
        };
        Ok(to_attr(ino.0, &meta, self.pending.get(&ino.0).map(|p| p.size)))
    }

    fn entry(&mut self, rel: &Path) -> io::Result<FileAttr> {
        let meta = fs::symlink_metadata(self.backing.join(rel))?;
        let ino = self.ino_of(rel);
        Ok(to_attr(ino, &meta, self.pending.get(&ino).map(|p| p.size)))
    }

    fn pending_mut(&mut self, ino: INodeNo, fh: Option<FileHandle>) -> io::Result<&mut Pending> {
        if !self.pending.contains_key(&ino.0) {
            let len = self.with_file(ino, fh, false, |f| Ok(f.metadata()?.len()))?;
            self.pending.insert(ino.0, Pending::new(len));
        }
        Ok(self.pending.get_mut(&ino.0).expect("inserted above"))
    }

    fn set_size(&mut self, ino: INodeNo, fh: Option<FileHandle>, size: u64) -> io::Result<()> {
        if self.attr(ino, fh)?.size != size {
            self.pending_mut(ino, fh)?.set_size(size);
        }
        Ok(())
    }

    /// Makes a file's pending changes durable. On failure they stay pending.
    fn sync(&mut self, ino: INodeNo, fh: Option<FileHandle>) -> io::Result<()> {
        let pending = self.pending.remove(&ino.0);
        let res = self.with_file(ino, fh, true, |file| {
            if let Some(p) = &pending {
                p.apply(file)?;
            }
            file.sync_all()
        });
        if let (Err(_), Some(p)) = (&res, pending) {
            self.pending.insert(ino.0, p);
        }
        res
    }

    fn add_file(&mut self, file: File) -> FileHandle {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, file);
        FileHandle(fh)
    }

    /// After a create, mkdir, mknod or symlink: the owner is the caller.
    fn created(&mut self, req: &Request, rel: &Path) -> io::Result<FileAttr> {
        std::os::unix::fs::lchown(self.backing.join(rel), Some(req.uid()), Some(req.gid()))?;
        self.entry(rel)
    }
}

fn to_attr(ino: u64, meta: &fs::Metadata, pending_size: Option<u64>) -> FileAttr {
    let time = |secs: i64, nsecs: i64| {
        let at = UNIX_EPOCH + Duration::from_nanos(nsecs as u64);
        if secs >= 0 {
            at + Duration::from_secs(secs as u64)
        } else {
            at - Duration::from_secs(secs.unsigned_abs())
        }
    };
    FileAttr {
        ino: INodeNo(ino),
        size: pending_size.unwrap_or(meta.len()),
        blocks: pending_size.map_or(meta.blocks(), |s| s.div_ceil(512)),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

fn to_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// Opens a backing file read-write (fsync writes through it), read-only where that is refused.
fn open_backing(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path).or_else(|_| File::open(path))
}

/// The FUSE side: holds the same state as the [`LazyFs`] handle.
struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// Unwraps an `io::Result` or replies with its errno and returns.
macro_rules! tri {
    ($e:expr, $reply:ident) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(Errno::from(io::Error::from(e))),
        }
    };
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.st();
        let rel = tri!(st.child(parent, name), reply);
        let attr = tri!(st.entry(&rel), reply);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let attr = tri!(self.st().attr(ino, fh), reply);
        reply.attr(&TTL, &attr);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.st();
        if let Some(size) = size {
            tri!(st.set_size(ino, fh, size), reply);
        }
        if let Some(mode) = mode {
            let perm = Permissions::from_mode(mode & 0o7777);
            tri!(st.with_file(ino, fh, false, |f| f.set_permissions(perm)), reply);
        }
        if uid.is_some() || gid.is_some() {
            tri!(st.with_file(ino, fh, false, |f| std::os::unix::fs::fchown(f, uid, gid)), reply);
        }
        if atime.is_some() || mtime.is_some() {
            let mut times = FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(to_time(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(to_time(t));
            }
            tri!(st.with_file(ino, fh, false, |f| f.set_times(times)), reply);
        }
        let attr = tri!(st.attr(ino, fh), reply);
        reply.attr(&TTL, &attr);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let path = tri!(self.st().path(ino), reply);
        let target = tri!(fs::read_link(path), reply);
        reply.data(target.as_os_str().as_bytes());
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        use rustix::fs::{FileType as Ft, Mode, CWD};
        let mut st = self.st();
        let rel = tri!(st.child(parent, name), reply);
        let path = st.backing.join(&rel);
        let perm = Mode::from_raw_mode(mode & !umask & 0o7777);
        tri!(rustix::fs::mknodat(CWD, &path, Ft::from_raw_mode(mode), perm, rdev.into()), reply);
        tri!(fs::set_permissions(&path, Permissions::from_mode(mode & !umask & 0o7777)), reply);
        let attr = tri!(st.created(req, &rel), reply);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut st = self.st();
        let rel = tri!(st.child(parent, name), reply);
        let path = st.backing.join(&rel);
        tri!(fs::create_dir(&path), reply);
        tri!(fs::set_permissions(&path, Permissions::from_mode(mode & !umask & 0o7777)), reply);
        let attr = tri!(st.created(req, &rel), reply);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.st();
        let rel = tri!(st.child(parent, name), reply);
        tri!(fs::remove_file(st.backing.join(&rel)), reply);
        st.drop_path(&rel);
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.st();
        let rel = tri!(st.child(parent, name), reply);
        tri!(fs::remove_dir(st.backing.join(&rel)), reply);
        st.drop_path(&rel);
        reply.ok();
    }

    fn symlink(&self, req: &Request, parent: INodeNo, name: &OsStr, target: &Path, reply: ReplyEntry) {
        let mut st = self.st();
        let rel = tri!(st.child(parent, name), reply);
        tri!(std::os::unix::fs::symlink(target, st.backing.join(&rel)), reply);
        let attr = tri!(st.created(req, &rel), reply);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let mut st = self.st();
        let from = tri!(st.child(parent, name), reply);
        let to = tri!(st.child(newparent, newname), reply);
        let (b_from, b_to) = (st.backing.join(&from), st.backing.join(&to));
        let rflags = rustix::fs::RenameFlags::from_bits_retain(flags.bits());
        tri!(rustix::fs::renameat_with(rustix::fs::CWD, &b_from, rustix::fs::CWD, &b_to, rflags), reply);
        if from != to {
            // A replaced target is gone, with its unsynced data; the moved file keeps its own.
            st.drop_path(&to);
            st.move_path(&from, &to);
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.st();
        let file = tri!(st.path(ino).and_then(|p| open_backing(&p)), reply);
        let fh = st.add_file(file);
        if flags.0 & libc::O_TRUNC != 0 {
            tri!(st.set_size(ino, Some(fh), 0), reply);
        }
        reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.st();
        let rel = tri!(st.child(parent, name), reply);
        let path = st.backing.join(&rel);
        let existed = path.symlink_metadata().is_ok();
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            opts.create_new(true);
        }
        let file = tri!(opts.open(&path), reply);
        if !existed {
            tri!(file.set_permissions(Permissions::from_mode(mode & !umask & 0o7777)), reply);
        }
        let fh = st.add_file(file);
        let mut attr = tri!(if existed { st.entry(&rel) } else { st.created(req, &rel) }, reply);
        if existed && flags & libc::O_TRUNC != 0 {
            tri!(st.set_size(attr.ino, Some(fh), 0), reply);
            attr.size = 0;
        }
        reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.st();
        let Some(file) = st.files.get(&fh.0) else { return reply.error(Errno::EBADF) };
        let data = match st.pending.get(&ino.0) {
            Some(p) => tri!(p.read(file, offset, size.into()), reply),
            None => {
                let mut buf = vec![0; size as usize];
                let n = tri!(read_full(file, offset, &mut buf), reply);
                buf.truncate(n);
                buf
            }
        };
        reply.data(&data);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.st();
        tri!(st.pending_mut(ino, Some(fh)), reply).write(offset, data);
        if flags.0 & SYNC_FLAGS != 0 {
            tri!(st.sync(ino, Some(fh)), reply);
        }
        reply.written(data.len() as u32);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        reply.ok(); // A close is not a sync.
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.st().files.remove(&fh.0); // Unsynced data stays pending, by inode.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = self.st();
        tri!(st.sync(ino, Some(fh)), reply);
        st.syncs += 1;
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.st();
        let rel = tri!(st.rel(ino), reply).to_path_buf();
        let parent = if ino.0 == ROOT { ROOT } else { st.ino_of(rel.parent().unwrap_or(Path::new(""))) };
        let mut list =
            vec![(ino.0, FileType::Directory, ".".into()), (parent, FileType::Directory, "..".into())];
        for entry in tri!(fs::read_dir(st.backing.join(&rel)), reply) {
            let entry = tri!(entry, reply);
            let kind = tri!(entry.file_type(), reply);
            let kind = FileType::from_std(kind).unwrap_or(FileType::RegularFile);
            list.push((st.ino_of(&rel.join(entry.file_name())), kind, entry.file_name()));
        }
        let fh = st.next_fh;
        st.next_fh += 1;
        st.dirs.insert(fh, list);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let st = self.st();
        let Some(list) = st.dirs.get(&fh.0) else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.st().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut st = self.st();
        tri!(st.path(ino).and_then(File::open).and_then(|d| d.sync_all()), reply);
        st.syncs += 1;
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = tri!(rustix::fs::statvfs(&self.st().backing), reply);
        let (bsize, frsize, namemax) = (s.f_bsize as u32, s.f_frsize as u32, s.f_namemax as u32);
        reply.statfs(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, bsize, namemax, frsize);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions); this only says it exists.
        tri!(self.st().path(ino).and_then(fs::symlink_metadata), reply);
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut st = self.st();
        let size = tri!(st.attr(ino, Some(fh)), reply).size;
        match mode {
            0 if offset + length > size => tri!(st.set_size(ino, Some(fh), offset + length), reply),
            0 | libc::FALLOC_FL_KEEP_SIZE => {} // Space is not modelled.
            _ => return reply.error(Errno::EOPNOTSUPP),
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval map against a plain byte vector, over random writes and size changes.
    #[test]
    fn pending_matches_a_replay_in_order() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for round in 0..200 {
            let base: Vec<u8> = (0..next(64)).map(|i| i as u8 | 0x80).collect();
            let file = tempfile::tempfile().expect("a temp file");
            file.write_all_at(&base, 0).expect("write the base");
            let (mut model, mut p) = (base.clone(), Pending::new(base.len() as u64));
            for step in 0..30 {
                if next(4) == 0 {
                    let size = next(96) as usize;
                    model.resize(size, 0);
                    p.set_size(size as u64);
                } else {
                    let (off, len) = (next(80) as usize, next(24) as usize);
                    let data: Vec<u8> = (0..len).map(|i| (round + step + i) as u8 & 0x7f).collect();
                    if len > 0 {
                        model.resize(model.len().max(off + len), 0);
                        model[off..off + len].copy_from_slice(&data);
                    }
                    p.write(off as u64, &data);
                }
                let (off, len) = (next(100), next(100));
                let want: Vec<u8> = model.iter().skip(off as usize).take(len as usize).copied().collect();
                assert_eq!(p.read(&file, off, len).expect("read"), want, "round {round} step {step}");
            }
            p.apply(&file).expect("apply");
            let mut durable = vec![0; model.len() + 1];
            let n = read_full(&file, 0, &mut durable).expect("read back");
            assert_eq!(&durable[..n], &model[..], "round {round} applied");
        }
    }
}
