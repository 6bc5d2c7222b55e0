//! What one VM is made of, with the limits the VMM enforces before touching KVM.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use vmm_control::limits::{CMDLINE_BYTES_MAX, MEMORY_MIB_MAX, MEMORY_MIB_MIN, VCPUS_MAX};
/// Default cap of the console log (the older half is kept in `<log>.old`).
pub const CONSOLE_LOG_BYTES_DEFAULT: u64 = 1 << 20;
pub use vmm_control::limits::{DISKS_MAX, NICS_MAX};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub domain: String,
    pub generation: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// Raw disk images, each served as a virtio-blk device, in guest order (at most
    /// [`DISKS_MAX`]).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs, each on an existing tap device.
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    pub console_log: PathBuf,
    pub console_log_bytes_max: u64,
}

/// One disk: a raw image file, and whether the guest may only read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Opened read-only, offered with VIRTIO_BLK_F_RO, and every write refused.
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// `PATH`, `PATH,ro` or `PATH,rw`, the VMM's `--disk` argument: a last `,ro` or `,rw`
    /// says how the disk is attached (writable when there is none); any other comma is
    /// part of the path (a file named `a,ro` is `a,ro,rw`).
    fn from_str(text: &str) -> Result<DiskConfig, String> {
        let (path, read_only) = match text.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            _ => (text, false),
        };
        if path.is_empty() {
            return Err(format!("{text:?}: a disk needs a path (PATH, PATH,ro or PATH,rw)"));
        }
        Ok(DiskConfig { path: path.into(), read_only })
    }
}

/// One NIC: the tap it is plugged into on the host, and the MAC the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    pub tap: String,
    /// "52:54:00:12:34:56".
    pub mac: String,
}

impl std::str::FromStr for NicConfig {
    type Err = String;

    /// `tap=NAME,mac=MAC`, the VMM's `--nic` argument.
    fn from_str(text: &str) -> Result<NicConfig, String> {
        let (mut tap, mut mac) = (None, None);
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) => tap = Some(v.to_owned()),
                Some(("mac", v)) => mac = Some(v.to_owned()),
                _ => return Err(format!("{part:?} is not tap=NAME or mac=MAC")),
            }
        }
        match (tap, mac) {
            (Some(tap), Some(mac)) => Ok(NicConfig { tap, mac }),
            _ => Err(format!("{text:?}: a NIC needs tap=NAME,mac=MAC")),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("memory {0} MiB is outside {MEMORY_MIB_MIN}..={MEMORY_MIB_MAX} MiB")]
    Memory(u64),
    #[error("{0} vCPUs is outside 1..={VCPUS_MAX}")]
    Vcpus(u8),
    #[error("kernel command line is {0} bytes, over {CMDLINE_BYTES_MAX}")]
    Cmdline(usize),
    #[error("kernel {0} is missing")]
    KernelMissing(String),
    #[error("initrd {0} is missing")]
    InitrdMissing(String),
    #[error("disk {0} is missing")]
    DiskMissing(String),
    #[error("{0} disks; at most {DISKS_MAX}")]
    Disks(usize),
    #[error("disk {0} is given twice (disks {1} and {2})")]
    DiskTwice(String, usize, usize),
    #[error("{0} NICs; at most {max}", max = crate::layout::NICS_MAX)]
    Nics(usize),
    #[error("NIC {0}: {1:?} is not a MAC address like 52:54:00:12:34:56")]
    Mac(usize, String),
    #[error("NIC {0}: {1:?} is not a network interface name (1-15 bytes, no '/')")]
    TapName(usize, String),
    #[error("memory {want_mib} MiB is more than the host has ({host_mib} MiB)")]
    HostMemory { want_mib: u64, host_mib: u64 },
}

impl VmConfig {
    /// Check everything that can be checked without KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(host_mib) = host_memory_mib() {
            if self.memory_mib > host_mib {
                return Err(ConfigError::HostMemory { want_mib: self.memory_mib, host_mib });
            }
        }
        if !(MEMORY_MIB_MIN..=MEMORY_MIB_MAX).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if !(1..=VCPUS_MAX).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.cmdline.len() > CMDLINE_BYTES_MAX {
            return Err(ConfigError::Cmdline(self.cmdline.len()));
        }
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.display().to_string()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::InitrdMissing(initrd.display().to_string()));
            }
        }
        if self.disks.len() > DISKS_MAX {
            return Err(ConfigError::Disks(self.disks.len()));
        }
        let mut files = Vec::new();
        for (i, disk) in self.disks.iter().enumerate() {
            if !disk.path.is_file() {
                return Err(ConfigError::DiskMissing(disk.path.display().to_string()));
            }
            // One file twice would be two devices over one image (and a writable one
            // conflicts with its own lock): the same file under two names is refused too.
            let file = disk.path.canonicalize().unwrap_or_else(|_| disk.path.clone());
            if let Some(first) = files.iter().position(|f| *f == file) {
                return Err(ConfigError::DiskTwice(disk.path.display().to_string(), first, i));
            }
            files.push(file);
        }
        if self.nics.len() > crate::layout::NICS_MAX {
            return Err(ConfigError::Nics(self.nics.len()));
        }
        for (i, nic) in self.nics.iter().enumerate() {
            if crate::devices::virtio_net::parse_mac(&nic.mac).is_none() {
                return Err(ConfigError::Mac(i, nic.mac.clone()));
            }
            if nic.tap.is_empty() || nic.tap.len() >= libc::IFNAMSIZ || nic.tap.contains(['\0', '/']) {
                return Err(ConfigError::TapName(i, nic.tap.clone()));
            }
        }
        Ok(())
    }
}

pub use vmm_control::host_memory_mib;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nics: Vec<NicConfig>) -> VmConfig {
        VmConfig {
            domain: "d".into(),
            generation: 1,
            kernel: std::env::current_exe().unwrap(),
            initrd: None,
            cmdline: String::new(),
            memory_mib: 32,
            vcpus: 1,
            disks: Vec::new(),
            nics,
            console_log: "/tmp/unused".into(),
            console_log_bytes_max: 1 << 20,
        }
    }

    fn nic(tap: &str, mac: &str) -> NicConfig {
        NicConfig { tap: tap.into(), mac: mac.into() }
    }

    #[test]
    fn nic_arguments_parse_and_bad_ones_say_why() {
        let n: NicConfig = "tap=drvt1n0,mac=52:54:00:00:00:01".parse().unwrap();
        assert_eq!(n, nic("drvt1n0", "52:54:00:00:00:01"));
        let e = "tap=drvt1n0".parse::<NicConfig>().unwrap_err();
        assert!(e.contains("needs tap=NAME,mac=MAC"), "{e}");
        let e = "tap=x,model=e1000".parse::<NicConfig>().unwrap_err();
        assert!(e.contains("\"model=e1000\" is not tap=NAME or mac=MAC"), "{e}");
    }

    #[test]
    fn nics_are_checked_before_anything_starts() {
        assert_eq!(config(vec![nic("drvt1n0", "52:54:00:00:00:01")]).validate(), Ok(()));
        assert_eq!(
            config(vec![nic("t", "52:54:00:00:00")]).validate(),
            Err(ConfigError::Mac(0, "52:54:00:00:00".into()))
        );
        let long = "a".repeat(16);
        assert_eq!(
            config(vec![nic("t", "52:54:00:00:00:01"), nic(&long, "52:54:00:00:00:02")]).validate(),
            Err(ConfigError::TapName(1, long))
        );
        let many = vec![nic("t", "52:54:00:00:00:01"); crate::layout::NICS_MAX + 1];
        assert_eq!(config(many).validate(), Err(ConfigError::Nics(crate::layout::NICS_MAX + 1)));
    }

    fn disk(path: &std::path::Path, read_only: bool) -> DiskConfig {
        DiskConfig { path: path.to_owned(), read_only }
    }

    #[test]
    fn disk_arguments_parse_with_their_mode_last() {
        let d = |text: &str| text.parse::<DiskConfig>().unwrap();
        assert_eq!(d("/v/a.raw"), disk("/v/a.raw".as_ref(), false));
        assert_eq!(d("/v/a.raw,ro"), disk("/v/a.raw".as_ref(), true));
        assert_eq!(d("/v/a.raw,rw"), disk("/v/a.raw".as_ref(), false));
        assert_eq!(d("/v/a,b.raw"), disk("/v/a,b.raw".as_ref(), false));
        assert_eq!(d("/v/a,ro,rw"), disk("/v/a,ro".as_ref(), false));
        assert_eq!(d("/v/a,ro,ro"), disk("/v/a,ro".as_ref(), true));
        let e = ",ro".parse::<DiskConfig>().unwrap_err();
        assert!(e.contains("a disk needs a path"), "{e}");
    }

    #[test]
    fn disks_are_checked_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = (0..=DISKS_MAX)
            .map(|i| {
                let p = dir.path().join(format!("d{i}.raw"));
                std::fs::write(&p, [0u8; 512]).unwrap();
                p
            })
            .collect();
        let mut c = config(Vec::new());
        c.disks = files[..DISKS_MAX].iter().enumerate().map(|(i, p)| disk(p, i % 2 == 1)).collect();
        assert_eq!(c.validate(), Ok(()));
        c.disks.push(disk(&files[DISKS_MAX], false));
        assert_eq!(c.validate(), Err(ConfigError::Disks(DISKS_MAX + 1)));
        assert_eq!(ConfigError::Disks(9).to_string(), "9 disks; at most 8");
        c.disks = vec![disk(&files[0], false), disk(&dir.path().join("missing.raw"), true)];
        assert!(matches!(c.validate(), Err(ConfigError::DiskMissing(p)) if p.ends_with("missing.raw")));
        // The same file twice, under another name the second time.
        let other_name = dir.path().join(".").join("d0.raw");
        c.disks = vec![disk(&files[0], false), disk(&files[1], true), disk(&other_name, true)];
        assert!(matches!(c.validate(), Err(ConfigError::DiskTwice(_, 0, 2))), "{:?}", c.validate());
    }
}
