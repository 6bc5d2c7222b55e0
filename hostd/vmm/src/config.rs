//! What one VM is made of, with the limits the VMM enforces before touching KVM.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Guest RAM below the MMIO hole; larger guests need a second memory region (not yet).
pub const MEMORY_MIB_MAX: u64 = 3072;
/// The smallest guest: the test guest needs 1 MiB of image plus its dirty area.
pub const MEMORY_MIB_MIN: u64 = 4;
/// vCPUs per VM. APs need an MP table or ACPI; until then one.
pub const VCPUS_MAX: u8 = 1;
/// The kernel command line, without the terminating NUL.
pub const CMDLINE_BYTES_MAX: usize = 4095;
/// Default cap of the console log (the older half is kept in `<log>.old`).
pub const CONSOLE_LOG_BYTES_DEFAULT: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub domain: String,
    pub generation: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// A raw disk image served as virtio-blk.
    pub disk: Option<PathBuf>,
    pub console_log: PathBuf,
    pub console_log_bytes_max: u64,
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
        if let Some(disk) = &self.disk {
            if !disk.is_file() {
                return Err(ConfigError::DiskMissing(disk.display().to_string()));
            }
        }
        Ok(())
    }
}

/// Total RAM of this machine, from /proc/meminfo.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
