//! The domain spec file `drover domain define --file` reads, in YAML or TOML:
//!
//! ```yaml
//! vcpus: 2
//! memory_mib: 1024
//! kernel: /var/lib/drover/vmlinux      # or: boot_disk: true
//! initrd: /var/lib/drover/initrd.img   # optional
//! cmdline: console=ttyS0
//! disks: [{volume: images/web-root, read_only: false}]
//! nics: [{network: default}]           # mac optional
//! ha_priority: 10                      # optional: restart elsewhere on host failure
//! required_labels: {zone: a}
//! anti_affinity_group: web
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use proto::api as pb;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// `pool/name`.
    pub volume: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicFile {
    pub network: String,
    #[serde(default)]
    pub mac: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub boot_disk: bool,
    #[serde(default)]
    pub disks: Vec<DiskFile>,
    #[serde(default)]
    pub nics: Vec<NicFile>,
    #[serde(default)]
    pub ha_priority: Option<u32>,
    #[serde(default)]
    pub required_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub anti_affinity_group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("reading {path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid YAML domain spec: {message}")]
    Yaml { path: String, message: String },
    #[error("{path} is not a valid TOML domain spec: {message}")]
    Toml { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Read a spec from `path` (TOML if it ends in `.toml`, YAML otherwise).
pub fn read(path: &Path) -> Result<pb::DomainSpec, SpecFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| SpecFileError::Read { path: shown.clone(), source })?;
    let file: SpecFile = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| SpecFileError::Toml { path: shown, message: e.to_string() })?
    } else {
        serde_yaml_ng::from_str(&text)
            .map_err(|e| SpecFileError::Yaml { path: shown, message: e.to_string() })?
    };
    to_pb(file)
}

pub fn to_pb(f: SpecFile) -> Result<pb::DomainSpec, SpecFileError> {
    let boot = match (f.kernel, f.boot_disk) {
        (Some(kernel), false) => pb::domain_spec::Boot::Kernel(pb::KernelBoot {
            kernel,
            initrd: f.initrd.unwrap_or_default(),
            cmdline: f.cmdline,
        }),
        (None, true) => pb::domain_spec::Boot::Disk(true),
        _ => return Err(SpecFileError::Invalid("give exactly one of `kernel` and `boot_disk: true`".into())),
    };
    let disks = f
        .disks
        .into_iter()
        .map(|d| {
            let (pool, name) = d.volume.split_once('/').ok_or_else(|| {
                SpecFileError::Invalid(format!("disk volume {:?} is not pool/name", d.volume))
            })?;
            Ok(pb::Disk {
                volume: Some(pb::VolumeRef { pool: pool.into(), name: name.into() }),
                read_only: d.read_only,
            })
        })
        .collect::<Result<_, SpecFileError>>()?;
    Ok(pb::DomainSpec {
        vcpus: f.vcpus,
        memory_mib: f.memory_mib,
        boot: Some(boot),
        disks,
        nics: f.nics.into_iter().map(|n| pb::Nic { network: n.network, mac: n.mac }).collect(),
        ha_restart: f.ha_priority.is_some(),
        ha_priority: f.ha_priority.unwrap_or(0),
        required_labels: f.required_labels.into_iter().collect(),
        anti_affinity_group: f.anti_affinity_group.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_toml_read_alike() {
        let dir = tempfile_dir();
        let yaml = dir.join("web.yaml");
        std::fs::write(&yaml, "vcpus: 2\nmemory_mib: 1024\nkernel: /k\ncmdline: quiet\ndisks: [{volume: images/root}]\nnics: [{network: default}]\nha_priority: 5\n").unwrap();
        let toml_path = dir.join("web.toml");
        std::fs::write(&toml_path, "vcpus = 2\nmemory_mib = 1024\nkernel = \"/k\"\ncmdline = \"quiet\"\nha_priority = 5\n[[disks]]\nvolume = \"images/root\"\n[[nics]]\nnetwork = \"default\"\n").unwrap();
        let a = read(&yaml).unwrap();
        let b = read(&toml_path).unwrap();
        assert_eq!(a, b);
        assert!(a.ha_restart && a.ha_priority == 5);
        std::fs::write(&yaml, "vcpus: 2\nmemory_mib: 1024\nboot_disk: true\nkernel: /k\n").unwrap();
        assert!(matches!(read(&yaml), Err(SpecFileError::Invalid(_))));
        std::fs::write(&yaml, "vcpus: 2\nmemory: 1024\n").unwrap();
        assert!(matches!(read(&yaml), Err(SpecFileError::Yaml { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("drover-spec-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
