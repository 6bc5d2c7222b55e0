//! Mutual TLS for every gRPC connection, and who is at the other end of one.
//!
//! A process with TLS holds three PEM files in one directory ([`TlsFiles`]): the cluster's
//! CA certificate, its own certificate and its key. It presents its certificate on every
//! connection it makes and accepts only peers whose certificate the CA signed (rustls
//! through tonic; expired or foreign certificates fail the handshake). A certificate
//! names its holder in its subject: the common name is the holder's name, the
//! organizational unit its [`Kind`] (`replica`, `host` or `user`).
//!
//! [`Door`] is the tower layer every server puts in front of its services. It reads the
//! caller's [`Identity`] from the connection's certificate and refuses what that kind may
//! not call ([`allowed`]): the raft services only to replicas (and a host's learner its
//! join), a host's own service only to replicas. Every caller that passes the door has its
//! identity written into the request's `drover-principal` header, replacing whatever the
//! client sent, so the audit log's principal is the proven name. A refusal is logged
//! with the identity and method and changes nothing.
//!
//! Without TLS ([`Transport::insecure`]) there are no identities: the door lets every
//! call through and the principal header is taken on trust, which is why servers refuse
//! to listen beyond loopback without TLS unless told `--insecure`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, ServerTlsConfig};
use tracing::warn;

/// The metadata header that names who makes a change (set by [`Door`] under TLS).
pub const PRINCIPAL_HEADER: &str = "drover-principal";
/// The principal of a call that names none (insecure mode only).
pub const ANONYMOUS: &str = "anonymous";
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Longest holder name a certificate may give (it becomes the audit principal).
pub const NAME_BYTES_MAX: usize = 128;

/// What a certificate's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A control replica (voter).
    Replica,
    /// A host: its hostd and its learner replica.
    Host,
    /// A person or a program using the public API.
    User,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Replica, Kind::Host, Kind::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Replica => "replica",
            Kind::Host => "host",
            Kind::User => "user",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown certificate kind {s:?} (replica, host or user)"))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds a certificate: the principal of every call made with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for Identity {
    /// `kind:name`, the form the audit log records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// Whether `name` may name a certificate's holder: printable, no separators, bounded.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
}

/// The identity a DER certificate names in its subject (CN = name, OU = kind).
pub fn identity_of(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let subject = cert.subject();
    let text = |attr: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>, what: &str| {
        attr.ok_or_else(|| format!("the certificate's subject has no {what}"))?
            .as_str()
            .map(str::to_owned)
            .map_err(|e| format!("the certificate's {what} is not text: {e}"))
    };
    let name = text(subject.iter_common_name().next(), "common name (the holder's name)")?;
    let kind = text(subject.iter_organizational_unit().next(), "organizational unit (its kind)")?;
    let kind = kind.parse::<Kind>()?;
    if !valid_name(&name) {
        return Err(format!("the certificate's holder name {name:?} is not a valid name"));
    }
    Ok(Identity { kind, name })
}

/// The identity of the PEM certificate in `pem`.
pub fn identity_of_pem(pem: &[u8]) -> Result<Identity, String> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    identity_of(&block.contents)
}

/// Where a process's TLS files are: `ca.pem`, `cert.pem` and `key.pem` in one directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub dir: PathBuf,
}

impl TlsFiles {
    pub const CA: &'static str = "ca.pem";
    pub const CERT: &'static str = "cert.pem";
    pub const KEY: &'static str = "key.pem";

    pub fn new(dir: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles { dir: dir.into() }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join(Self::CA)
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join(Self::CERT)
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join(Self::KEY)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// A process's loaded TLS material.
#[derive(Clone)]
pub struct Tls {
    ca: Certificate,
    identity: tonic::transport::Identity,
    /// Who this process is, from its own certificate.
    pub own: Identity,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("own", &self.own).finish_non_exhaustive()
    }
}

impl Tls {
    /// Load `files`; their certificate must name its holder.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let ca = read(&files.ca())?;
        let cert = read(&files.cert())?;
        let key = read(&files.key())?;
        let own =
            identity_of_pem(&cert).map_err(|reason| TlsError::Certificate { path: files.cert(), reason })?;
        Ok(Tls {
            ca: Certificate::from_pem(ca),
            identity: tonic::transport::Identity::from_pem(cert, key),
            own,
        })
    }

    fn server_config(&self) -> ServerTlsConfig {
        // A client without a certificate gets through the handshake and is refused by the
        // door with UNAUTHENTICATED and a reason, rather than a bare handshake failure.
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true)
            .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS))
    }

    fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS))
    }
}

/// How a process connects and serves: with its TLS material, or in insecure mode.
#[derive(Debug, Clone, Default)]
pub struct Transport(Option<Arc<Tls>>);

impl Transport {
    pub fn insecure() -> Transport {
        Transport(None)
    }

    pub fn tls(tls: Tls) -> Transport {
        Transport(Some(Arc::new(tls)))
    }

    /// TLS from `dir` when given, else insecure.
    pub fn from_dir(dir: Option<&Path>) -> Result<Transport, TlsError> {
        Ok(match dir {
            Some(d) => Transport::tls(Tls::load(&TlsFiles::new(d))?),
            None => Transport::insecure(),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.0.is_some()
    }

    /// Who this process is, under TLS.
    pub fn own(&self) -> Option<&Identity> {
        self.0.as_deref().map(|t| &t.own)
    }

    /// An endpoint for `addr` (`host:port`), over TLS when this transport has it.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        match &self.0 {
            None => Endpoint::from_shared(format!("http://{addr}")),
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.client_config()),
        }
    }

    /// `server` with this transport's TLS, if any.
    pub fn server(
        &self,
        server: tonic::transport::Server,
    ) -> Result<tonic::transport::Server, tonic::transport::Error> {
        match &self.0 {
            None => Ok(server),
            Some(tls) => server.tls_config(tls.server_config()),
        }
    }

    /// The layer that checks callers at this server's door.
    pub fn door(&self) -> Door {
        Door { tls: self.is_tls() }
    }
}

/// What a process was told about security: how it connects and serves, and whether it
/// may serve plain listeners (the API without TLS, metrics) beyond loopback (`--insecure`).
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub transport: Transport,
    pub insecure: bool,
}

/// Whether a caller of `kind` may call the gRPC method at `path` (`/package.Service/Method`).
/// The public API is open to every holder of a certificate of the cluster (what each may
/// do there is for roles to say), and so is a replica's status; the rest of replication
/// is for replicas; hosts join as learners.
pub fn allowed(kind: Kind, path: &str) -> bool {
    if path == "/drover.raft.v1.Replication/Status" {
        return true;
    }
    if path.starts_with("/drover.raft.v1.Raft/") || path.starts_with("/drover.raft.v1.Replication/") {
        return kind == Kind::Replica || (kind == Kind::Host && path == "/drover.raft.v1.Replication/Join");
    }
    if path.starts_with("/drover.host.v1.") {
        return kind == Kind::Replica;
    }
    true
}

/// The identity the client proved on this request's connection, if it presented a
/// certificate.
pub fn caller<B>(request: &http::Request<B>) -> Option<Identity> {
    let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    let leaf = certs.first()?;
    match identity_of(leaf.as_ref()) {
        Ok(identity) => Some(identity),
        Err(reason) => {
            warn!(%reason, "a client certificate signed by the cluster's CA names no holder");
            None
        }
    }
}

/// The tower layer in front of a server's services ([module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct Door {
    tls: bool,
}

impl<S> tower::Layer<S> for Door {
    type Service = DoorService<S>;

    fn layer(&self, inner: S) -> DoorService<S> {
        DoorService { inner, tls: self.tls }
    }
}

#[derive(Debug, Clone)]
pub struct DoorService<S> {
    inner: S,
    tls: bool,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for DoorService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, futures::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        use futures::future::{ready, Either};
        if !self.tls {
            return Either::Left(self.inner.call(request));
        }
        let path = request.uri().path().to_owned();
        let Some(identity) = caller(&request) else {
            warn!(method = %path, "refused: no client certificate");
            let status =
                tonic::Status::unauthenticated("a client certificate signed by the cluster's CA is required");
            return Either::Right(ready(Ok(status.into_http())));
        };
        if !allowed(identity.kind, &path) {
            warn!(%identity, method = %path, "refused: not allowed for this kind of certificate");
            let status = tonic::Status::permission_denied(format!("{identity} may not call {path}"));
            return Either::Right(ready(Ok(status.into_http())));
        }
        let principal = http::HeaderValue::from_str(&identity.to_string())
            .expect("valid_name admits header-safe bytes only");
        request.headers_mut().insert(PRINCIPAL_HEADER, principal);
        request.extensions_mut().insert(identity);
        Either::Left(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_is_for_replicas_and_a_host_may_only_join() {
        for kind in Kind::ALL {
            assert!(allowed(kind, "/drover.api.v1.Domains/List"));
            assert_eq!(allowed(kind, "/drover.raft.v1.Raft/AppendEntries"), kind == Kind::Replica);
            assert_eq!(allowed(kind, "/drover.raft.v1.Replication/Submit"), kind == Kind::Replica);
            assert_eq!(allowed(kind, "/drover.host.v1.HostAgent/Console"), kind == Kind::Replica);
            assert_eq!(allowed(kind, "/drover.raft.v1.Replication/Join"), kind != Kind::User);
            assert!(allowed(kind, "/drover.raft.v1.Replication/Status"));
        }
    }

    #[test]
    fn names_are_bounded_and_header_safe() {
        assert!(valid_name("alice"));
        assert!(valid_name("host-1.example"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a:b"));
        assert!(!valid_name("é"));
        assert!(!valid_name(&"a".repeat(NAME_BYTES_MAX + 1)));
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
        }
        assert!("admin".parse::<Kind>().is_err());
    }
}
