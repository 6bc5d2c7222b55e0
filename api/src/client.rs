//! A client of the public API over several endpoints, tried in turn: a call that finds a
//! replica unreachable, loses its connection on the way, or reaches a follower that names
//! the leader, moves on (to the leader when named). Retries are bounded. A write lost on
//! the way may have been committed: its retry carries the same request id, so the cluster
//! answers it with the first commit instead of doing it twice.

use std::future::Future;
use std::time::Duration;

use raft::tls::Transport;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Most attempts for one call.
pub const CALL_ATTEMPTS_MAX: usize = 12;
const RETRY_PAUSE_MS: u64 = 200;
const CALL_TIMEOUT_S: u64 = 30;

/// Endpoints (`host:port`), how to reach them, and who is calling.
#[derive(Debug, Clone)]
pub struct ApiClient {
    endpoints: Vec<String>,
    /// Under TLS the servers take the caller's name from its certificate instead.
    pub principal: String,
    transport: Transport,
    /// A bearer token sent with every call (under TLS; `drover token create` makes them).
    bearer: Option<String>,
}

impl ApiClient {
    /// A client without TLS: `principal` is taken on trust by the servers.
    pub fn new(endpoints: Vec<String>, principal: String) -> ApiClient {
        ApiClient::with_transport(endpoints, principal, Transport::insecure())
    }

    pub fn with_transport(endpoints: Vec<String>, principal: String, transport: Transport) -> ApiClient {
        assert!(!endpoints.is_empty(), "at least one endpoint");
        ApiClient { endpoints, principal, transport, bearer: None }
    }

    /// This client proves who it is with bearer token `token` (its certificate, if any,
    /// still makes the connection).
    pub fn with_bearer(self, token: String) -> ApiClient {
        ApiClient { bearer: Some(token), ..self }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let endpoint = self
            .transport
            .endpoint(addr)
            .map_err(|e| Status::invalid_argument(format!("bad endpoint {addr:?}: {e}")))?;
        Ok(endpoint
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(CALL_TIMEOUT_S))
            .connect_lazy())
    }

    /// A request carrying the principal header, and the current trace when traced.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Ok(v) = self.principal.parse() {
            r.metadata_mut().insert(crate::service::PRINCIPAL_HEADER, v);
        }
        if let Some(v) = self.bearer.as_ref().and_then(|t| format!("Bearer {t}").parse().ok()) {
            r.metadata_mut().insert(raft::tls::AUTHORIZATION_HEADER, v);
        }
        raft::telemetry::inject(r.metadata_mut());
        r
    }

    /// Run `call` against the endpoints in turn until one answers.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut next = 0usize;
        let mut hint: Option<String> = None;
        let mut last = Status::unavailable("no endpoint tried");
        for _ in 0..CALL_ATTEMPTS_MAX {
            let addr = hint.take().unwrap_or_else(|| self.endpoints[next % self.endpoints.len()].clone());
            match call(self.channel(&addr)?).await {
                Ok(v) => return Ok(v),
                Err(s) if s.code() == Code::Unavailable || connection_lost(&s) => {
                    hint = s
                        .metadata()
                        .get(raft::node::LEADER_ADDRESS_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if hint.is_none() || hint.as_deref() == Some(addr.as_str()) {
                        hint = None;
                        next += 1;
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
                    }
                    last = s;
                }
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }
}

/// Whether the call failed in the transport (the connection broke while the request or
/// its answer was on the way, as when the replica is killed), not in the service.
fn connection_lost(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;

    /// A replica that dies with the request on the way (here: one that accepts every
    /// connection and closes it at once) is retried like an unreachable one, within the
    /// bound, not reported as an unknown error after the first try.
    #[tokio::test]
    async fn a_connection_lost_on_the_way_is_retried_within_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let closer = tokio::spawn(async move {
            for _ in 0..CALL_ATTEMPTS_MAX * 4 {
                let Ok((conn, _)) = listener.accept().await else { return };
                drop(conn);
            }
        });
        let tries = AtomicUsize::new(0);
        let client = ApiClient::new(vec![addr], "test".into());
        let err = client
            .call(|ch| {
                tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await
                }
            })
            .await
            .unwrap_err();
        assert!(connection_lost(&err), "{err:?}");
        assert_eq!(tries.load(Ordering::SeqCst), CALL_ATTEMPTS_MAX, "last error: {err:?}");
        closer.abort();
    }
}
