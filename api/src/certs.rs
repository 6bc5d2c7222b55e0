//! Certificates for a cluster: a CA of its own, and the certificates it signs for
//! replicas, hosts and users (rcgen). `drover up` makes them for a local cluster;
//! `drover ca init` and `drover cert issue` for a real one.
//!
//! A certificate names its holder as [`raft::tls`] reads it: common name = the holder's
//! name, organizational unit = its kind, and for a user organization = its role. It is good for both ends of a connection
//! (server and client authentication), with the subject alternative names it is reached
//! by. Keys are ECDSA P-256; key files are written mode 0600. An issued certificate's
//! directory holds what a process's `--tls-dir` needs: `ca.pem`, `cert.pem`, `key.pem`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use raft::tls::{Kind, Role, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The CA's certificate and key, in the CA's directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
/// How long a new CA is valid.
pub const CA_DAYS_DEFAULT: u32 = 3650;
/// How long an issued certificate is valid.
pub const CERT_DAYS_DEFAULT: u32 = 365;
/// Most days a certificate may be valid for.
pub const DAYS_MAX: u32 = 36_500;

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub from: OffsetDateTime,
    pub until: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: u32) -> anyhow::Result<Validity> {
        if days == 0 || days > DAYS_MAX {
            bail!("a certificate is valid for 1 to {DAYS_MAX} days, not {days}");
        }
        let now = OffsetDateTime::now_utc();
        Ok(Validity { from: now - Duration::hours(1), until: now + Duration::days(i64::from(days)) })
    }

    /// One that ended yesterday (for tests of refusal).
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity { from: now - Duration::days(2), until: now - Duration::days(1) }
    }
}

/// A cluster's certificate authority.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    /// The certificate only: the key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// Write `contents` to `path`, readable by its owner only when `secret`.
fn write_file(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 });
    let mut f = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

impl Ca {
    /// Make a new CA named `name` in `dir` (refused if one is there already).
    pub fn create(dir: &Path, name: &str, validity: Validity) -> anyhow::Result<Ca> {
        if dir.join(CA_KEY).exists() {
            bail!("{} already holds a CA key; remove it to make a new CA", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        params.distinguished_name.push(DnType::OrganizationName, "drover");
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = validity.from;
        params.not_after = validity.until;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_file(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
        write_file(&dir.join(CA_CERT), &cert.pem(), false)?;
        Ok(Ca { cert_pem: cert.pem(), key })
    }

    /// The CA in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Ca> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let cert_pem = read(CA_CERT)?;
        let key = KeyPair::from_pem(&read(CA_KEY)?).context("the CA key")?;
        Issuer::from_ca_cert_pem(&cert_pem, &key).context("the CA certificate")?;
        Ok(Ca { cert_pem, key })
    }

    /// Make in `out` the files of `kind` `name`'s `--tls-dir`, for a holder reached at
    /// `sans` (host names or IP addresses); a user gets the viewer role.
    pub fn issue(
        &self,
        kind: Kind,
        name: &str,
        sans: &[String],
        validity: Validity,
        out: &Path,
    ) -> anyhow::Result<TlsFiles> {
        self.issue_with_role(kind, name, Role::Viewer, sans, validity, out)
    }

    /// [`Ca::issue`], for a user of `role` (written in the certificate's organization).
    pub fn issue_with_role(
        &self,
        kind: Kind,
        name: &str,
        role: Role,
        sans: &[String],
        validity: Validity,
        out: &Path,
    ) -> anyhow::Result<TlsFiles> {
        if kind != Kind::User && role != Role::Viewer {
            bail!("only a user's certificate names a role; a {kind} has its kind's rights");
        }
        if !raft::tls::valid_name(name) {
            bail!(
                "{name:?} cannot name a certificate's holder: 1 to {} letters, digits, '-', '_', '.' or '@'",
                raft::tls::NAME_BYTES_MAX
            );
        }
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).context("the CA certificate")?;
        let mut params = CertificateParams::new(sans.to_vec()).context("the subject alternative names")?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationalUnitName, kind.as_str());
        if kind == Kind::User {
            params.distinguished_name.push(DnType::OrganizationName, role.as_str());
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = validity.from;
        params.not_after = validity.until;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let files = TlsFiles::new(out);
        write_file(&files.key(), &key.serialize_pem(), true)?;
        write_file(&files.cert(), &cert.pem(), false)?;
        write_file(&files.ca(), &self.cert_pem, false)?;
        Ok(files)
    }
}

/// `drover ca …`: a cluster's certificate authority.
#[derive(Debug, clap::Subcommand)]
pub enum CaCmd {
    /// Make a new CA (its certificate and key) in a directory.
    Init {
        /// Where the CA's files go (ca.pem, ca.key; the key is the cluster: keep it safe).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name (its certificate's common name is "<name> CA").
        #[arg(long, default_value = "drover")]
        name: String,
        /// How many days it is valid.
        #[arg(long, default_value_t = CA_DAYS_DEFAULT)]
        days: u32,
    },
}

/// `drover cert …`: certificates the cluster's CA signs.
#[derive(Debug, clap::Subcommand)]
pub enum CertCmd {
    /// Sign a certificate for a replica, a host or a user, written as a --tls-dir.
    Issue {
        /// The CA's directory (from `drover ca init`).
        #[arg(long)]
        ca: PathBuf,
        /// What it is for: replica, host or user.
        #[arg(long)]
        kind: Kind,
        /// The holder's name: a replica's id, a host's name, a user's name.
        #[arg(long)]
        name: String,
        /// A user's role: viewer (reads), operator (domains, snapshots, migrations,
        /// attachments) or admin (everything).
        #[arg(long, default_value = "viewer")]
        role: Role,
        /// Names and addresses the holder is reached at (replicas and hosts), comma-separated.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
        /// How many days it is valid.
        #[arg(long, default_value_t = CERT_DAYS_DEFAULT)]
        days: u32,
        /// The directory to write (ca.pem, cert.pem, key.pem).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Run a `ca` verb, saying what it made.
pub fn run_ca(cmd: CaCmd, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { dir, name, days } => {
            Ca::create(&dir, &name, Validity::days(days)?)?;
            writeln!(out, "CA made in {} (keep {} secret)", dir.display(), dir.join(CA_KEY).display())?;
        }
    }
    Ok(())
}

/// Run a `cert` verb, saying what it made.
pub fn run_cert(cmd: CertCmd, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Issue { ca, kind, name, role, san, days, out: dir } => {
            let files =
                Ca::load(&ca)?.issue_with_role(kind, &name, role, &san, Validity::days(days)?, &dir)?;
            let role = if kind == Kind::User { format!(" ({role})") } else { String::new() };
            writeln!(out, "{kind}:{name}{role}: --tls-dir {}", files.dir.display())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_holder_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(&dir.path().join("ca"), "test", Validity::days(1).unwrap()).unwrap();
        let files = ca
            .issue(
                Kind::Host,
                "h1",
                &["127.0.0.1".into()],
                Validity::days(1).unwrap(),
                &dir.path().join("h1"),
            )
            .unwrap();
        let pem = std::fs::read(files.cert()).unwrap();
        let id = raft::tls::identity_of_pem(&pem).unwrap();
        assert_eq!((id.kind, id.name.as_str()), (Kind::Host, "h1"));
        let bob = ca
            .issue_with_role(
                Kind::User,
                "bob",
                Role::Operator,
                &[],
                Validity::days(1).unwrap(),
                &dir.path().join("bob"),
            )
            .unwrap();
        let id = raft::tls::identity_of_pem(&std::fs::read(bob.cert()).unwrap()).unwrap();
        assert_eq!((id.kind, id.role), (Kind::User, Role::Operator));
        let h2 = dir.path().join("h2");
        assert!(ca
            .issue_with_role(Kind::Host, "h2", Role::Admin, &[], Validity::days(1).unwrap(), &h2)
            .is_err());
        assert!(raft::tls::Tls::load(&files).is_ok());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(files.key()).unwrap().permissions().mode() & 0o777, 0o600);
        // The CA loads back and signs again; a second CA in the same place is refused.
        let again = Ca::load(&dir.path().join("ca")).unwrap();
        again.issue(Kind::User, "alice", &[], Validity::days(1).unwrap(), &dir.path().join("alice")).unwrap();
        assert!(Ca::create(&dir.path().join("ca"), "test", Validity::days(1).unwrap()).is_err());
        assert!(ca.issue(Kind::User, "a b", &[], Validity::days(1).unwrap(), &dir.path().join("x")).is_err());
        assert!(Validity::days(0).is_err());
    }
}
