//! The CLI's config file: which replicas to call and with which certificate, so that a
//! user of `drover up` types nothing more. `drover up` writes it; every verb reads it
//! where flags do not say otherwise (flags win, then the file, then the defaults).
//!
//! Where: `--config PATH` (or `DROVER_CONFIG`), else `$XDG_CONFIG_HOME/drover/config.toml`,
//! else `~/.config/drover/config.toml`; a missing default file is no config, and the
//! default file is not read when a flag names a cluster (`--endpoint`, `--tls-dir`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// How a config file that `drover up` wrote begins.
pub const WRITTEN_BY_UP: &str = "# Written by `drover up`.";

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Replica endpoints (`host:port`), tried in turn.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The directory with the user's certificate (`ca.pem`, `cert.pem`, `key.pem`), or
    /// only the CA's (`ca.pem`) for a user with a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
    /// A bearer token (`drover token create`), sent with every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Where the config file is when no `--config` names one.
pub fn default_path() -> Option<PathBuf> {
    let base =
        std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("drover").join("config.toml"))
}

/// Read the file at `path`.
pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a Drover config file", path.display()))
}

/// The default config file's contents, if there is one.
pub fn find_default() -> anyhow::Result<Option<ClientConfig>> {
    default_path().filter(|p| p.is_file()).map(|p| load(&p)).transpose()
}

/// Write `config` to `path` (its directory made if need be).
pub fn write(path: &Path, config: &ClientConfig) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(config).context("encoding the config")?;
    std::fs::write(path, format!("{WRITTEN_BY_UP}\n{text}"))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_config_reads_back_and_a_wrong_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d").join("config.toml");
        let config = ClientConfig {
            endpoints: vec!["127.0.0.1:1".into()],
            tls_dir: Some(dir.path().join("admin")),
            token: None,
        };
        write(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), config);
        std::fs::write(&path, "endpoint = 3\n").unwrap();
        assert!(load(&path).is_err());
        assert!(load(&dir.path().join("missing.toml")).is_err());
    }
}
