//! Certificates for the tests of the VMM and the drivers (migration streams over TLS),
//! which cannot reach `api::certs` (it depends on them): rcgen, as `drover cert` uses it.

use std::path::PathBuf;

/// A CA of a test's own, and certificates it signs as Drover issues them (common name
/// the holder, organizational unit its kind, the same key usages), each in a `--tls-dir` layout.
pub struct Pki {
    root: tempfile::TempDir,
    ca_pem: String,
    ca_key: rcgen::KeyPair,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("root", &self.root.path()).finish_non_exhaustive()
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

impl Pki {
    /// A new CA, in a temporary directory of its own.
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&ca_key).unwrap().pem();
        Pki { root: tempfile::tempdir().unwrap(), ca_pem, ca_key }
    }

    /// The TLS directory of `kind` (`host`, `replica`, `user`) `name`, reached at
    /// 127.0.0.1, made on first use.
    pub fn dir(&self, kind: &str, name: &str) -> PathBuf {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
        let dir = self.root.path().join(format!("{kind}-{name}"));
        if !dir.exists() {
            let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key).unwrap();
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.distinguished_name.push(DnType::OrganizationalUnitName, kind);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages =
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ca.pem"), &self.ca_pem).unwrap();
            std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        }
        dir
    }
}
