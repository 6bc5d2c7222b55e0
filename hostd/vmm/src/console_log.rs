//! The serial console's log file, capped in size: when the current file reaches the cap
//! it becomes `<name>.old` (replacing the previous one) and a new file starts, so a
//! chatty guest uses at most twice the cap on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    file: File,
    written_bytes: u64,
    bytes_max: u64,
}

impl ConsoleLog {
    /// Open (append to) the log at `path`.
    pub fn open(path: &Path, bytes_max: u64) -> io::Result<ConsoleLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written_bytes = file.metadata()?.len();
        Ok(ConsoleLog { path: path.to_owned(), file, written_bytes, bytes_max: bytes_max.max(1) })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".old");
        std::fs::rename(&self.path, old)?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.written_bytes = 0;
        Ok(())
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written_bytes >= self.bytes_max {
            self.rotate()?;
        }
        let room = (self.bytes_max - self.written_bytes) as usize;
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.written_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_never_grows_past_twice_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = ConsoleLog::open(&path, 100).unwrap();
        for i in 0..1000u32 {
            writeln!(log, "line {i}").unwrap();
        }
        let now = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(dir.path().join("console.log.old")).unwrap();
        assert!(now.len() <= 100 && old.len() == 100, "{} {}", now.len(), old.len());
        // The newest output is kept.
        assert!(format!("{old}{now}").ends_with("line 999\n"));
    }
}
