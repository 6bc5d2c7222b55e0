//! Mutual TLS on a migration stream (rustls over the blocking socket).
//!
//! Both VMMs present their host's certificate (hostd's `--tls-dir`: `ca.pem`, `cert.pem`,
//! `key.pem`, read at each connection) and accept only a certificate the cluster's CA
//! signed that names the expected host: organizational unit `host`, common name the other
//! end's host (the names `raft::tls` gives certificates). The source is the TLS client,
//! the target the server. Only TLS 1.3, and the server sends no session tickets: after
//! the handshake, every byte on the socket is a frame of the migration, which lets the
//! source look for a refusal by peeking at the socket ([`Stream::tcp`]).
//!
//! [`Stream`] is the stream either way: in the clear for a cluster without TLS, or
//! through TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConnection, DigitallySignedStruct, RootCertStore, ServerConnection, SignatureScheme};
use vmm_control::control::MigrationTls;

use super::MigrationError;

/// The kind a host's certificate names (its organizational unit).
const HOST_KIND: &str = "host";
/// The name the source gives the target in the handshake (not checked: see
/// [`SignedByCa`]).
const SERVER_NAME: &str = "drover-migration";

/// The migration stream: in the clear, or through TLS.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Client(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<rustls::StreamOwned<ServerConnection, TcpStream>>),
}

impl Stream {
    /// The socket under it (for timeouts, shutdown and peeking).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Client(s) => &s.sock,
            Stream::Server(s) => &s.sock,
        }
    }

    /// Whether the other end's certificate names host `peer` (a stream in the clear has
    /// none to check).
    pub fn check_peer(&self, peer: &str) -> Result<(), MigrationError> {
        let certs = match self {
            Stream::Plain(_) => return Ok(()),
            Stream::Client(s) => s.conn.peer_certificates(),
            Stream::Server(s) => s.conn.peer_certificates(),
        };
        check_peer(certs.and_then(|c| c.first()), peer)
    }

    /// Say that nothing more comes from this end (TLS's close_notify first), and shut
    /// the socket's sending side.
    pub fn finish(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Client(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
            Stream::Server(s) => {
                s.conn.send_close_notify();
                let _ = s.flush();
            }
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Client(s) => s.read(buf),
            Stream::Server(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Client(s) => s.write(buf),
            Stream::Server(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Client(s) => s.flush(),
            Stream::Server(s) => s.flush(),
        }
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> MigrationError {
    MigrationError::Failed(format!("migration TLS: {what}: {e}"))
}

/// The host's certificate chain, key and the cluster's CA, from `dir`.
struct Material {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load(dir: &Path) -> Result<Material, MigrationError> {
    let file = |name: &str| dir.join(name);
    let certs = |name: &str| -> Result<Vec<CertificateDer<'static>>, MigrationError> {
        let path = file(name);
        let certs = CertificateDer::pem_file_iter(&path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| failed(&format!("reading {}", path.display()), e))?;
        if certs.is_empty() {
            return Err(failed(&path.display().to_string(), "holds no certificate"));
        }
        Ok(certs)
    };
    let mut roots = RootCertStore::empty();
    for ca in certs("ca.pem")? {
        roots.add(ca).map_err(|e| failed("the CA certificate", e))?;
    }
    let key_path = file("key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| failed(&format!("reading {}", key_path.display()), e))?;
    Ok(Material { roots: Arc::new(roots), chain: certs("cert.pem")?, key })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether `der` names host `peer`: `Ok` or why not.
fn check_peer(der: Option<&CertificateDer<'_>>, peer: &str) -> Result<(), MigrationError> {
    let der = der.ok_or_else(|| failed("the other end", "presented no certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| failed("its certificate", e))?;
    let subject = cert.subject();
    let text = |a: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
        a.and_then(|a| a.as_str().ok()).unwrap_or_default().to_owned()
    };
    let name = text(subject.iter_common_name().next());
    let kind = text(subject.iter_organizational_unit().next());
    if kind != HOST_KIND || name != peer {
        return Err(failed(
            "the other end",
            format!("its certificate names {kind} {name:?}, not host {peer:?}"),
        ));
    }
    Ok(())
}

/// Run the handshake on `tcp` to its end (within the socket's timeouts).
fn handshake<C, D>(conn: &mut C, tcp: &mut TcpStream) -> Result<(), MigrationError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
{
    while conn.is_handshaking() {
        conn.complete_io(tcp).map_err(|e| failed("handshake", e))?;
    }
    // What the handshake left to send (a client's last flight).
    while conn.wants_write() {
        conn.write_tls(tcp).map_err(|e| failed("handshake", e))?;
    }
    Ok(())
}

/// The source's end: connect TLS over `tcp` to the target host `tls.peer`.
pub fn client(mut tcp: TcpStream, tls: &MigrationTls) -> Result<Stream, MigrationError> {
    let m = load(&tls.dir)?;
    let provider = provider();
    let verifier = Arc::new(SignedByCa { roots: m.roots.clone(), provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| failed("configuration", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(m.chain, m.key)
        .map_err(|e| failed("the host's certificate", e))?;
    // The server name is not checked ([`SignedByCa`]); the holder's name is, below.
    let name = ServerName::try_from(SERVER_NAME).expect("a DNS name");
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(|e| failed("connection", e))?;
    handshake(&mut conn, &mut tcp)?;
    let stream = Stream::Client(Box::new(rustls::StreamOwned::new(conn, tcp)));
    stream.check_peer(&tls.peer)?;
    Ok(stream)
}

/// The target's end: accept TLS over `tcp` from a certificate of the cluster. Whether
/// it is the source host's is for [`Stream::check_peer`] (so that a wrong one can be told
/// why, over the stream).
pub fn server(mut tcp: TcpStream, tls: &MigrationTls) -> Result<Stream, MigrationError> {
    let m = load(&tls.dir)?;
    let provider = provider();
    let clients = WebPkiClientVerifier::builder_with_provider(m.roots, provider.clone())
        .build()
        .map_err(|e| failed("configuration", e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| failed("configuration", e))?
        .with_client_cert_verifier(clients)
        .with_single_cert(m.chain, m.key)
        .map_err(|e| failed("the host's certificate", e))?;
    // Nothing but the migration's frames after the handshake (see the module's doc).
    config.send_tls13_tickets = 0;
    let mut conn = ServerConnection::new(Arc::new(config)).map_err(|e| failed("connection", e))?;
    handshake(&mut conn, &mut tcp)?;
    Ok(Stream::Server(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

/// A server certificate is good when the cluster's CA signed it and it is in its
/// validity; which host holds it is checked after the handshake ([`check_peer`]), by the
/// name in it, not by the address the target listens on.
#[derive(Debug)]
struct SignedByCa {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SignedByCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
