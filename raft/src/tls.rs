//! Mutual TLS for every gRPC connection, and who is at the other end of one.
//!
//! A process with TLS holds three PEM files in one directory ([`TlsFiles`]): the cluster's
//! CA certificate, its own certificate and its key. It presents its certificate on every
//! connection it makes and accepts only peers whose certificate the CA signed (rustls
//! through tonic; expired or foreign certificates fail the handshake). A certificate
//! names its holder in its subject: the common name is the holder's name, the
//! organizational unit its [`Kind`] (`replica`, `host` or `user`).
//!
//! [`Door`] is the tower layer every server puts in front of its services. It first
//! refuses what its [`Port`] does not serve: a replica's public port serves the public
//! API (and its status), its peer port the raft and replication services, which only
//! cluster members (replicas and hosts) may call there. It reads the
//! caller's [`Identity`] from the connection's certificate, or from a bearer token
//! (`authorization: Bearer NAME.SECRET`) where the server has a [`TokenBook`] (the
//! public API's, backed by its replica's applied state), and refuses what it may not
//! call ([`allowed`]): the raft services only to replicas (and a host's learner its join),
//! a host's own service only to replicas, the public API by [`API_RULES`] (a user's
//! [`Role`], which its certificate's organization names; hosts read and report, for their
//! own host only: [`acts_for_host`]). Every caller that passes the door has its
//! identity written into the request's `drover-principal` header, replacing whatever the
//! client sent, so the audit log's principal is the proven name, and the identity goes
//! into the request's extensions, from which a write takes the rights `decide` checks
//! again ([`Identity::caller`]). A refusal is logged with the identity and method and
//! changes nothing. A client's TLS directory may hold the CA's certificate alone (a token
//! holder's); servers refuse to run without a certificate of their own.
//!
//! Without TLS ([`Transport::insecure`]) there are no identities: the door lets every
//! call through and the principal header is taken on trust, which is why servers refuse
//! to listen beyond loopback without TLS unless told `--insecure`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use controlplane::model::{parse_bearer, Token};
use controlplane::Caller;

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

pub use controlplane::model::Role;

/// Who holds a certificate: the principal of every call made with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub kind: Kind,
    pub name: String,
    /// A user's role (replicas and hosts have their kind's rights instead).
    pub role: Role,
}

impl Identity {
    /// The rights decisions are made with for calls of this identity.
    pub fn caller(&self) -> Caller {
        match self.kind {
            Kind::Replica => Caller::Cluster,
            Kind::Host => Caller::Host(self.name.clone()),
            Kind::User => Caller::User(self.role),
        }
    }
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

/// The identity a DER certificate names in its subject (CN = name, OU = kind, and for a
/// user O = role; a user's certificate without O is a viewer's).
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
    let role = match subject.iter_organization().next() {
        Some(_) if kind != Kind::User => Role::Viewer,
        Some(o) => text(Some(o), "organization (its role)")?.parse::<Role>()?,
        None => Role::Viewer,
    };
    Ok(Identity { kind, name, role })
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
    /// Its certificate and key; none for a client that proves itself with a bearer token.
    identity: Option<tonic::transport::Identity>,
    /// Who this process is, from its own certificate.
    pub own: Option<Identity>,
    /// Where the files are (a host's VMMs read them for their migration streams).
    dir: PathBuf,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("own", &self.own).finish_non_exhaustive()
    }
}

impl Tls {
    /// Load `files`; their certificate must name its holder. A directory with the CA's
    /// certificate alone is a client's that checks the servers and proves itself with a
    /// bearer token instead ([`Tls::own`] is none; servers refuse to run so).
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let ca = Certificate::from_pem(read(&files.ca())?);
        if !files.cert().exists() && !files.key().exists() {
            return Ok(Tls { ca, identity: None, own: None, dir: files.dir.clone() });
        }
        let cert = read(&files.cert())?;
        let key = read(&files.key())?;
        let own =
            identity_of_pem(&cert).map_err(|reason| TlsError::Certificate { path: files.cert(), reason })?;
        Ok(Tls {
            ca,
            identity: Some(tonic::transport::Identity::from_pem(cert, key)),
            own: Some(own),
            dir: files.dir.clone(),
        })
    }

    fn server_config(&self) -> ServerTlsConfig {
        let identity = self.identity.clone().expect("servers run only under a certificate of their own");
        // A client without a certificate gets through the handshake and is refused by the
        // door with UNAUTHENTICATED and a reason (or let in by a bearer token), rather
        // than a bare handshake failure.
        ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true)
            .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS))
    }

    fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS));
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
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

    /// Who this process is, under TLS with a certificate of its own.
    pub fn own(&self) -> Option<&Identity> {
        self.0.as_deref().and_then(|t| t.own.as_ref())
    }

    /// The directory the TLS files were loaded from, under TLS.
    pub fn dir(&self) -> Option<&Path> {
        self.0.as_deref().map(|t| t.dir.as_path())
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

    /// The layer that checks callers at the door of a server listening on `port`.
    pub fn door(&self, port: Port) -> Door {
        Door { port, seen: self.is_tls().then(Arc::default), tokens: None }
    }
}

/// What a process was told about security: how it connects and serves, and whether it
/// may serve plain listeners (the API without TLS, metrics) beyond loopback (`--insecure`).
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub transport: Transport,
    pub insecure: bool,
}

/// Who may call one method of the public API: users of at least `role`, and hosts where
/// `host` (for their own host only, checked by the method: [`acts_for_host`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub role: Role,
    pub host: bool,
}

const fn rule(role: Role, host: bool) -> Rule {
    Rule { role, host }
}

/// The rule of every method of the public API (`drover.api.v1`), by `Service/Method`. A
/// method missing here is refused to everyone but replicas (a test fails for any method
/// of the protos without a rule).
pub const API_RULES: &[(&str, Rule)] = {
    use Role::*;
    &[
        ("Audit/Log", rule(Viewer, false)),
        ("Audit/StateAt", rule(Viewer, false)),
        ("Audit/Verify", rule(Viewer, false)),
        ("Audit/Export", rule(Viewer, false)),
        ("Domains/Define", rule(Operator, false)),
        ("Domains/Undefine", rule(Operator, false)),
        ("Domains/Start", rule(Operator, false)),
        ("Domains/Shutdown", rule(Operator, false)),
        ("Domains/Destroy", rule(Operator, false)),
        ("Domains/Reboot", rule(Operator, false)),
        ("Domains/Suspend", rule(Operator, false)),
        ("Domains/Resume", rule(Operator, false)),
        ("Domains/Get", rule(Viewer, true)),
        ("Domains/List", rule(Viewer, true)),
        ("Domains/Console", rule(Viewer, false)),
        ("Events/Watch", rule(Viewer, true)),
        ("Hosts/Register", rule(Admin, true)),
        ("Hosts/SetState", rule(Admin, true)),
        ("Hosts/List", rule(Viewer, true)),
        ("Hosts/Report", rule(Admin, true)),
        ("Hosts/Heartbeat", rule(Admin, true)),
        ("Hosts/HaPlan", rule(Viewer, false)),
        ("Hosts/Leases", rule(Viewer, false)),
        ("Hosts/Clear", rule(Admin, false)),
        ("Hosts/SetClusterSettings", rule(Admin, false)),
        ("Hosts/GetClusterSettings", rule(Viewer, true)),
        ("Migrations/Start", rule(Operator, false)),
        ("Migrations/Abort", rule(Operator, false)),
        ("Migrations/SetDowntime", rule(Operator, false)),
        ("Migrations/Get", rule(Viewer, true)),
        ("Migrations/List", rule(Viewer, true)),
        ("Migrations/Report", rule(Admin, true)),
        ("Networks/Create", rule(Admin, false)),
        ("Networks/Delete", rule(Admin, false)),
        ("Networks/Get", rule(Viewer, true)),
        ("Networks/List", rule(Viewer, true)),
        ("Snapshots/Create", rule(Operator, false)),
        ("Snapshots/Delete", rule(Operator, false)),
        ("Snapshots/Revert", rule(Operator, false)),
        ("Snapshots/List", rule(Viewer, true)),
        ("Snapshots/Report", rule(Admin, true)),
        ("Snapshots/CloneDomain", rule(Operator, false)),
        ("StoragePools/Create", rule(Admin, false)),
        ("StoragePools/Delete", rule(Admin, false)),
        ("StoragePools/Get", rule(Viewer, true)),
        ("StoragePools/List", rule(Viewer, true)),
        ("Volumes/Create", rule(Admin, false)),
        ("Volumes/Delete", rule(Admin, false)),
        ("Volumes/Resize", rule(Admin, false)),
        ("Volumes/Attach", rule(Operator, false)),
        ("Volumes/Detach", rule(Operator, false)),
        ("Volumes/Get", rule(Viewer, true)),
        ("Volumes/List", rule(Viewer, true)),
        ("Volumes/Report", rule(Admin, true)),
        ("Tokens/Create", rule(Admin, false)),
        ("Tokens/Revoke", rule(Admin, false)),
        ("Tokens/List", rule(Admin, false)),
    ]
};

/// The public API's package, as it begins a method's path.
const API_PREFIX: &str = "/drover.api.v1.";
/// The peer services' packages (raft and replication; a host's own), as they begin a
/// method's path.
const PEER_PREFIXES: [&str; 2] = ["/drover.raft.v1.", "/drover.host.v1."];
/// A replica's status: a peer method also served on the public port.
const STATUS_PATH: &str = "/drover.raft.v1.Replication/Status";

/// What one listening port serves, and so whom its door admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The public API, health, reflection and a replica's status: what users call. The
    /// peer services are not served here, with TLS or without.
    Public,
    /// The raft and replication services (and a host's own): for cluster members only. A
    /// user's certificate is refused, and bearer tokens are not taken.
    Peer,
    /// Both on one port: a replica without a peer port of its own, which serves on
    /// loopback only.
    Both,
}

impl Port {
    /// Whether this port serves the method at `path`.
    pub fn serves(self, path: &str) -> bool {
        let peer = PEER_PREFIXES.iter().any(|p| path.starts_with(p));
        match self {
            Port::Public => !peer || path == STATUS_PATH,
            Port::Peer => !path.starts_with(API_PREFIX),
            Port::Both => true,
        }
    }

    /// Whether a caller of `kind` may call anything on this port.
    pub fn admits(self, kind: Kind) -> bool {
        self != Port::Peer || kind != Kind::User
    }
}

/// The rule of the public API method at `path`, if it is one.
pub fn api_rule(path: &str) -> Option<Rule> {
    let method = path.strip_prefix(API_PREFIX)?;
    API_RULES.iter().find(|(m, _)| *m == method).map(|(_, r)| *r)
}

/// Whether `who` may call the gRPC method at `path` (`/package.Service/Method`). Replicas
/// may call everything; the public API by [`API_RULES`]; a replica's status is open to
/// every certificate of the cluster; the rest of replication is for replicas (hosts join
/// as learners and backfill their archives); a host's own service is for replicas; health
/// and reflection are open.
pub fn allowed(who: &Identity, path: &str) -> bool {
    if who.kind == Kind::Replica || path == STATUS_PATH {
        return true;
    }
    if let Some(rule) = api_rule(path) {
        return match who.kind {
            Kind::Host => rule.host,
            _ => who.role >= rule.role,
        };
    }
    // A host's learner joins, and fills gaps in its archive from the replicas (it holds
    // the log already: the archive tells it nothing new).
    if path == "/drover.raft.v1.Replication/Join" || path == "/drover.raft.v1.Replication/Archive" {
        return who.kind == Kind::Host;
    }
    !path.starts_with("/drover.")
}

/// Refuse a host's certificate acting for another host (a report, a heartbeat, a
/// registration names the host it is for). `caller` is the identity the door proved, if
/// any (none in insecure mode).
pub fn acts_for_host(caller: Option<&Identity>, host: &str) -> Result<(), tonic::Status> {
    match caller {
        Some(c) if c.kind == Kind::Host && c.name != host => {
            warn!(caller = %c, host, "refused: a host's certificate acting for another host");
            Err(tonic::Status::permission_denied(format!("{c} may act only for host {}, not {host}", c.name)))
        }
        _ => Ok(()),
    }
}

/// Most certificates whose identities a server keeps (then it forgets them all and parses
/// again).
const SEEN_CERTIFICATES_MAX: usize = 1024;

/// The identities of the client certificates a server has seen, by their DER bytes: each
/// is parsed once, not at every call (a connection carries many calls).
#[derive(Debug, Default)]
pub struct Seen(std::sync::Mutex<std::collections::HashMap<Vec<u8>, Option<Identity>>>);

impl Seen {
    /// The identity the client proved on this request's connection, if it presented a
    /// certificate that names one.
    pub fn caller<B>(&self, request: &http::Request<B>) -> Option<Identity> {
        let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
        let certs = info.peer_certs()?;
        let leaf = certs.first()?.as_ref();
        let mut seen = self.0.lock().expect("seen certificates lock");
        if let Some(identity) = seen.get(leaf) {
            return identity.clone();
        }
        let identity = identity_of(leaf)
            .inspect_err(
                |reason| warn!(%reason, "a client certificate signed by the cluster's CA names no holder"),
            )
            .ok();
        if seen.len() >= SEEN_CERTIFICATES_MAX {
            seen.clear();
        }
        seen.insert(leaf.to_vec(), identity.clone());
        identity
    }
}

/// The bearer tokens a door admits: a token's record by its holder's name, as this
/// replica last applied it (a revocation takes effect on each replica as it applies it).
#[derive(Clone)]
pub struct TokenBook(Arc<TokenLookup>);

/// A token's record by its holder's name.
type TokenLookup = dyn Fn(&str) -> Option<Token> + Send + Sync;

impl TokenBook {
    pub fn new(lookup: impl Fn(&str) -> Option<Token> + Send + Sync + 'static) -> TokenBook {
        TokenBook(Arc::new(lookup))
    }

    /// Who `header` (`authorization`) proves the caller is, or why it proves nothing.
    fn holder(&self, header: &http::HeaderValue, now_ms: u64) -> Result<Identity, &'static str> {
        let value = header.to_str().map_err(|_| "the authorization header is not text")?;
        let bearer = value.strip_prefix("Bearer ").ok_or("authorization must be \"Bearer <token>\"")?;
        let (name, secret) = parse_bearer(bearer.trim()).ok_or("not a Drover bearer token")?;
        match (self.0)(name) {
            Some(t) if t.is_secret(&secret) && t.expired_at(now_ms) => Err("the bearer token has expired"),
            Some(t) if t.is_secret(&secret) => Ok(Identity { kind: Kind::User, name: t.name, role: t.role }),
            _ => Err("unknown or revoked bearer token"),
        }
    }
}

impl fmt::Debug for TokenBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenBook")
    }
}

/// The header a bearer token comes in.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// The tower layer in front of a server's services ([module docs](self)); without TLS
/// (`seen` is `None`) it lets through every call its [`Port`] serves.
#[derive(Debug, Clone)]
pub struct Door {
    port: Port,
    seen: Option<Arc<Seen>>,
    tokens: Option<TokenBook>,
}

impl Door {
    /// This door admits the bearer tokens of `book` too (the public API's); others refuse
    /// every bearer token. A peer port takes none.
    pub fn with_tokens(self, book: TokenBook) -> Door {
        assert_ne!(self.port, Port::Peer, "a peer port admits cluster members' certificates only");
        Door { tokens: Some(book), ..self }
    }
}

impl<S> tower::Layer<S> for Door {
    type Service = DoorService<S>;

    fn layer(&self, inner: S) -> DoorService<S> {
        DoorService { inner, port: self.port, seen: self.seen.clone(), tokens: self.tokens.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct DoorService<S> {
    inner: S,
    port: Port,
    seen: Option<Arc<Seen>>,
    tokens: Option<TokenBook>,
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
        let refuse = |status: tonic::Status| Either::Right(ready(Ok(status.into_http())));
        let path = request.uri().path();
        if !self.port.serves(path) {
            return refuse(tonic::Status::unimplemented(format!(
                "{path} is not served on this port: a replica serves its public API and its peer services (raft, replication) on ports of their own"
            )));
        }
        let Some(seen) = &self.seen else {
            return Either::Left(self.inner.call(request));
        };
        let path = path.to_owned();
        // A bearer token, when sent, is who calls (even over a certificate's connection).
        let identity = match request.headers_mut().remove(AUTHORIZATION_HEADER) {
            Some(header) => {
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let holder = match &self.tokens {
                    Some(book) => book.holder(&header, now_ms),
                    None => Err("this server takes no bearer tokens"),
                };
                match holder {
                    Ok(identity) => identity,
                    Err(reason) => {
                        warn!(method = %path, reason, "refused: a bearer token");
                        return refuse(tonic::Status::unauthenticated(reason));
                    }
                }
            }
            None => match seen.caller(&request) {
                Some(identity) => identity,
                None => {
                    warn!(method = %path, "refused: no client certificate or bearer token");
                    return refuse(tonic::Status::unauthenticated(
                        "a client certificate signed by the cluster's CA, or a bearer token, is required",
                    ));
                }
            },
        };
        if !self.port.admits(identity.kind) {
            warn!(%identity, method = %path, "refused: a user on the peer port");
            return refuse(tonic::Status::permission_denied(format!(
                "{identity} may not call the peer port: it serves cluster members (replicas and hosts) only"
            )));
        }
        if !allowed(&identity, &path) {
            warn!(%identity, role = %identity.role, method = %path, "refused: not allowed for this certificate");
            return refuse(tonic::Status::permission_denied(format!("{identity} may not call {path}")));
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

    fn who(kind: Kind, role: Role) -> Identity {
        Identity { kind, name: "x".into(), role }
    }

    #[test]
    fn replication_is_for_replicas_and_a_host_may_only_join() {
        for kind in Kind::ALL {
            let id = who(kind, Role::Admin);
            assert!(allowed(&id, "/drover.api.v1.Domains/List"));
            assert_eq!(allowed(&id, "/drover.raft.v1.Raft/AppendEntries"), kind == Kind::Replica);
            assert_eq!(allowed(&id, "/drover.raft.v1.Replication/Submit"), kind == Kind::Replica);
            assert_eq!(allowed(&id, "/drover.host.v1.HostAgent/Console"), kind == Kind::Replica);
            assert_eq!(allowed(&id, "/drover.raft.v1.Replication/Join"), kind != Kind::User);
            assert_eq!(allowed(&id, "/drover.raft.v1.Replication/Archive"), kind != Kind::User);
            assert!(allowed(&id, "/drover.raft.v1.Replication/Status"));
            assert!(allowed(&id, "/grpc.health.v1.Health/Check"));
            assert_eq!(allowed(&id, "/drover.api.v1.Domains/NotAMethod"), kind == Kind::Replica);
        }
    }

    /// Every method of every Drover service in the protos has its rule, and each role and
    /// kind gets what the table says (a new RPC without a rule fails here).
    #[test]
    fn every_rpc_has_a_rule_and_each_role_gets_its_share() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut api_methods = 0;
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{package}.{}/{}", service.name(), method.name());
                    let rule = api_rule(&path);
                    if package == "drover.api.v1" {
                        api_methods += 1;
                        let rule = rule.unwrap_or_else(|| panic!("{path} has no rule in API_RULES"));
                        for &role in Role::ALL {
                            assert_eq!(allowed(&who(Kind::User, role), &path), role >= rule.role, "{path}");
                        }
                        assert_eq!(allowed(&who(Kind::Host, Role::Viewer), &path), rule.host, "{path}");
                        let read = [
                            "Get",
                            "List",
                            "Watch",
                            "Console",
                            "Log",
                            "StateAt",
                            "Verify",
                            "Export",
                            "HaPlan",
                            "Leases",
                            "GetClusterSettings",
                        ]
                        .contains(&method.name());
                        // Credentials are secrets of a kind: only admins see the list.
                        let secret = service.name() == "Tokens";
                        assert_eq!(
                            rule.role == Role::Viewer,
                            read && !secret,
                            "{path}: reads are for viewers, writes are not"
                        );
                    } else {
                        assert!(package.starts_with("drover."), "{path}");
                        assert!(rule.is_none(), "{path}");
                    }
                    assert!(allowed(&who(Kind::Replica, Role::Viewer), &path), "{path}");
                }
            }
        }
        assert_eq!(api_methods, API_RULES.len(), "API_RULES names a method the protos do not have");
        // What hosts may do: read, and report and renew for themselves; never define.
        let host = who(Kind::Host, Role::Viewer);
        assert!(!allowed(&host, "/drover.api.v1.Domains/Define"));
        assert!(!allowed(&host, "/drover.api.v1.Networks/Create"));
        assert!(allowed(&host, "/drover.api.v1.Hosts/Heartbeat"));
        let h1 = Identity { kind: Kind::Host, name: "h1".into(), role: Role::Viewer };
        assert!(acts_for_host(Some(&h1), "h1").is_ok());
        assert_eq!(acts_for_host(Some(&h1), "h2").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(acts_for_host(Some(&who(Kind::User, Role::Admin)), "h2").is_ok());
        assert!(acts_for_host(None, "h2").is_ok());
    }

    /// The public port serves no peer method but a replica's status; the peer port serves
    /// no public API method and admits no user; one port for both serves everything.
    #[test]
    fn each_port_serves_its_own_services_and_the_peer_port_only_members() {
        for (path, public, peer) in [
            ("/drover.api.v1.Domains/Define", true, false),
            ("/grpc.health.v1.Health/Check", true, true),
            ("/drover.raft.v1.Raft/AppendEntries", false, true),
            ("/drover.raft.v1.Raft/Vote", false, true),
            ("/drover.raft.v1.Replication/Submit", false, true),
            ("/drover.raft.v1.Replication/Join", false, true),
            ("/drover.raft.v1.Replication/Status", true, true),
            ("/drover.host.v1.HostAgent/Console", false, true),
        ] {
            assert_eq!(Port::Public.serves(path), public, "{path}");
            assert_eq!(Port::Peer.serves(path), peer, "{path}");
            assert!(Port::Both.serves(path), "{path}");
        }
        for kind in Kind::ALL {
            assert!(Port::Public.admits(kind));
            assert!(Port::Both.admits(kind));
            assert_eq!(Port::Peer.admits(kind), kind != Kind::User);
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
        for &role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("admin".parse::<Kind>().is_err());
    }
}
