//! A client of the replication service: writes with retries across endpoints, replica
//! status and archive reads. Used by tests, the load generator and (until the public API
//! exists) tools.
//!
//! A write is retried with the same request id, so a retry after a lost answer or a
//! leader change gets the first answer instead of a second effect. Retries are bounded in
//! count and time.

use std::time::Duration;

use controlplane::{codec, Committed, EventEnvelope, Request};
use proto::raft::replication_client::ReplicationClient;
use proto::raft::{
    ArchiveRequest, MemberReply, MemberRequest, StateAtRequest, StatusReply, StatusRequest,
    SubmitBatchRequest, SubmitRequest,
};
use tonic::Code;

use crate::encoding;
use crate::network::Channels;
use crate::node::LEADER_PEER_HEADER;
use crate::tls::Transport;

/// Most attempts for one write before giving up.
pub const CLIENT_ATTEMPTS_MAX: u32 = 40;
/// Pause between attempts after an `Unavailable`.
pub const CLIENT_RETRY_PAUSE_MS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster refused the request; retrying will not change that.
    #[error("{code:?}: {message}")]
    Refused { code: Code, message: String },
    /// No replica could take the write within the retry budget.
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("bad reply: {0}")]
    BadReply(String),
}

/// Whether a write that failed with `code` may succeed if sent again (with its request id).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled | Code::Unknown
    )
}

/// A client over a list of replica endpoints (`host:port`).
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<String>,
    channels: Channels,
    call_timeout: Duration,
}

impl Client {
    /// A client without TLS (tests, the load generator).
    pub fn new(endpoints: Vec<String>) -> Client {
        Client::with_transport(endpoints, Transport::insecure())
    }

    pub fn with_transport(endpoints: Vec<String>, transport: Transport) -> Client {
        assert!(!endpoints.is_empty(), "a client needs at least one endpoint");
        Client { endpoints, channels: Channels::new(transport), call_timeout: Duration::from_secs(10) }
    }

    fn rpc(&self, endpoint: &str) -> Result<ReplicationClient<tonic::transport::Channel>, ClientError> {
        let channel = self
            .channels
            .get(endpoint)
            .map_err(|e| ClientError::BadReply(format!("endpoint {endpoint}: {e}")))?;
        Ok(ReplicationClient::new(channel))
    }

    /// Submit a request; retries across endpoints (following leader hints) on
    /// `Unavailable`, `DeadlineExceeded` and `Aborted`.
    pub async fn submit(&self, request: &Request) -> Result<Committed, ClientError> {
        let bytes = encoding::encode(request);
        let mut target = 0usize;
        let mut hint: Option<String> = None;
        let mut last = String::new();
        for attempt in 1..=CLIENT_ATTEMPTS_MAX {
            let endpoint =
                hint.take().unwrap_or_else(|| self.endpoints[target % self.endpoints.len()].clone());
            let mut req = tonic::Request::new(SubmitRequest { request: bytes.clone() });
            req.set_timeout(self.call_timeout);
            match self.rpc(&endpoint)?.submit(req).await {
                Ok(reply) => {
                    return encoding::decode(&reply.into_inner().committed)
                        .map_err(|e| ClientError::BadReply(e.to_string()));
                }
                Err(s) if retryable(s.code()) => {
                    hint =
                        s.metadata().get(LEADER_PEER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    if hint.as_deref() == Some(endpoint.as_str()) {
                        hint = None;
                    }
                    if hint.is_none() {
                        target += 1;
                    }
                    last = format!("{endpoint}: {s}");
                    if attempt < CLIENT_ATTEMPTS_MAX {
                        tokio::time::sleep(Duration::from_millis(CLIENT_RETRY_PAUSE_MS)).await;
                    }
                }
                Err(s) => {
                    return Err(ClientError::Refused { code: s.code(), message: s.message().to_owned() })
                }
            }
        }
        Err(ClientError::Unavailable { attempts: CLIENT_ATTEMPTS_MAX, last })
    }

    /// Submit several requests in one call per attempt (at most
    /// [`crate::service::SUBMIT_BATCH_MAX`]); the outcomes come back in their order. Writes
    /// that fail in a way a retry may fix are sent again together, to the next endpoint,
    /// with their request ids, as [`Client::submit`] does for one.
    pub async fn submit_batch(&self, requests: &[Request]) -> Vec<Result<Committed, ClientError>> {
        let mut outcomes: Vec<Option<Result<Committed, ClientError>>> =
            (0..requests.len()).map(|_| None).collect();
        let encoded: Vec<Vec<u8>> = requests.iter().map(encoding::encode).collect();
        let mut target = 0usize;
        let mut last = String::new();
        for attempt in 1..=CLIENT_ATTEMPTS_MAX {
            let pending: Vec<usize> = (0..requests.len()).filter(|i| outcomes[*i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            let endpoint = self.endpoints[target % self.endpoints.len()].clone();
            let batch =
                SubmitBatchRequest { requests: pending.iter().map(|i| encoded[*i].clone()).collect() };
            let mut req = tonic::Request::new(batch);
            req.set_timeout(self.call_timeout);
            let mut retry = false;
            match self.rpc(&endpoint) {
                Err(e) => {
                    last = e.to_string();
                    retry = true;
                }
                Ok(mut rpc) => match rpc.submit_batch(req).await {
                    Ok(reply) => {
                        let results = reply.into_inner().results;
                        if results.len() != pending.len() {
                            let bad = format!("{} outcomes for {} writes", results.len(), pending.len());
                            for i in pending {
                                outcomes[i] = Some(Err(ClientError::BadReply(bad.clone())));
                            }
                            break;
                        }
                        for (i, r) in pending.into_iter().zip(results) {
                            let code = Code::from_i32(r.code);
                            outcomes[i] = match code {
                                Code::Ok => Some(
                                    encoding::decode(&r.committed)
                                        .map_err(|e| ClientError::BadReply(e.to_string())),
                                ),
                                c if retryable(c) => {
                                    retry = true;
                                    last = format!("{endpoint}: {c:?}: {}", r.message);
                                    None
                                }
                                c => Some(Err(ClientError::Refused { code: c, message: r.message })),
                            };
                        }
                    }
                    Err(s) if retryable(s.code()) => {
                        last = format!("{endpoint}: {s}");
                        retry = true;
                    }
                    Err(s) => {
                        for i in pending {
                            outcomes[i] = Some(Err(ClientError::Refused {
                                code: s.code(),
                                message: s.message().to_owned(),
                            }));
                        }
                        break;
                    }
                },
            }
            if retry {
                target += 1;
                if attempt < CLIENT_ATTEMPTS_MAX {
                    tokio::time::sleep(Duration::from_millis(CLIENT_RETRY_PAUSE_MS)).await;
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(ClientError::Unavailable { attempts: CLIENT_ATTEMPTS_MAX, last: last.clone() })
                })
            })
            .collect()
    }

    /// One replica's status.
    pub async fn status(&self, endpoint: &str) -> Result<StatusReply, tonic::Status> {
        self.member_status(endpoint, 0).await
    }

    /// Member `member`'s own status, fetched by the replica at `endpoint` over the
    /// member's peer port (0: that replica's own).
    pub async fn member_status(&self, endpoint: &str, member: u64) -> Result<StatusReply, tonic::Status> {
        let mut req = tonic::Request::new(StatusRequest { member });
        req.set_timeout(self.call_timeout);
        let mut rpc = self.rpc(endpoint).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(rpc.status(req).await?.into_inner())
    }

    /// Every archived event of one replica from `from_seq` on.
    pub async fn archive(&self, endpoint: &str, from_seq: u64) -> Result<Vec<EventEnvelope>, tonic::Status> {
        let mut out = Vec::new();
        let mut next = from_seq;
        loop {
            let mut req = tonic::Request::new(ArchiveRequest { from_seq: next, limit: 5000 });
            req.set_timeout(self.call_timeout);
            let mut rpc = self.rpc(endpoint).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let batch = rpc.archive(req).await?.into_inner().events;
            if batch.is_empty() {
                return Ok(out);
            }
            for bytes in batch {
                let e: EventEnvelope =
                    codec::decode(&bytes).map_err(|e| tonic::Status::data_loss(e.to_string()))?;
                next = e.seq + 1;
                out.push(e);
            }
        }
    }

    /// The hash of one replica's state right after event `seq`.
    pub async fn state_hash_at(&self, endpoint: &str, seq: u64) -> Result<String, tonic::Status> {
        let mut req = tonic::Request::new(StateAtRequest { seq });
        req.set_timeout(self.call_timeout);
        let mut rpc = self.rpc(endpoint).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(rpc.state_at(req).await?.into_inner().state_hash)
    }

    /// Make learner `node_id` a voter (ask the leader at `endpoint`).
    pub async fn promote(&self, endpoint: &str, node_id: u64) -> Result<MemberReply, tonic::Status> {
        let mut rpc = self.rpc(endpoint).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(rpc.promote(MemberRequest { node_id }).await?.into_inner())
    }

    /// Remove member `node_id` (ask the leader at `endpoint`).
    pub async fn remove(&self, endpoint: &str, node_id: u64) -> Result<MemberReply, tonic::Status> {
        let mut rpc = self.rpc(endpoint).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(rpc.remove(MemberRequest { node_id }).await?.into_inner())
    }
}
