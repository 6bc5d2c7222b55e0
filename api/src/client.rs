//! A client of the public API over several endpoints, tried in turn: a call that finds a
//! replica unreachable, or a follower that names the leader, moves on (to the leader when
//! named). Retries are bounded.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Most attempts for one call.
pub const CALL_ATTEMPTS_MAX: usize = 12;
const RETRY_PAUSE_MS: u64 = 200;
const CALL_TIMEOUT_S: u64 = 30;

/// Endpoints (`host:port`) and who is calling.
#[derive(Debug, Clone)]
pub struct ApiClient {
    endpoints: Vec<String>,
    pub principal: String,
}

fn channel(addr: &str) -> Result<Channel, Status> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(format!("bad endpoint {addr:?}: {e}")))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(CALL_TIMEOUT_S))
        .connect_lazy())
}

impl ApiClient {
    pub fn new(endpoints: Vec<String>, principal: String) -> ApiClient {
        assert!(!endpoints.is_empty(), "at least one endpoint");
        ApiClient { endpoints, principal }
    }

    /// A request carrying the principal header.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Ok(v) = self.principal.parse() {
            r.metadata_mut().insert(crate::service::PRINCIPAL_HEADER, v);
        }
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
            match call(channel(&addr)?).await {
                Ok(v) => return Ok(v),
                Err(s) if s.code() == Code::Unavailable => {
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
