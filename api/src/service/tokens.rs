//! `drover.api.v1.Tokens`: bearer tokens for users and programs without a client
//! certificate. This replica makes a token's secret; only its hash is proposed, and the
//! secret goes back to the caller once.

use controlplane::model::{self, TOKEN_SECRET_BYTES};
use controlplane::Command;
use proto::api as pb;
use proto::api::tokens_server::Tokens;
use proto::convert::{self, required};
use tonic::{Request, Response, Status};

use super::Api;

/// How long a create waits for this replica to apply the token it committed (a follower
/// applies after the leader).
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[tonic::async_trait]
impl Tokens for Api {
    async fn create(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        let role = required::<pb::Role>(r.role, "role")?;
        let secret: [u8; TOKEN_SECRET_BYTES] = rand::random();
        let secret_sha256 = model::secret_sha256(&secret);
        let ttl_ms = r.ttl_seconds.saturating_mul(1000);
        let command = Command::CreateToken { name: r.name.clone(), role, secret_sha256, ttl_ms };
        let write = self.write(&meta, &ext, r.request_id, command).await?;
        // A retry of a request that committed before gets that commit: its secret was
        // someone else's call's to show.
        let mut applied = self.node.applied_seq();
        let caught_up = applied.wait_for(|seq| *seq >= write.last_seq);
        tokio::time::timeout(APPLY_WAIT, caught_up)
            .await
            .map_err(|_| {
                Status::unavailable("this replica has not applied the new token yet; list tokens to see it")
            })?
            .map_err(|_| Status::unavailable("this replica is shutting down"))?;
        let token = self.node.read_local(|s| s.token(&r.name).cloned());
        let Some(token) = token.filter(|t| t.secret_sha256 == secret_sha256) else {
            return Err(Status::already_exists(format!(
                "token {} was made by an earlier call with this request id; its secret was shown to that call only",
                r.name
            )));
        };
        Ok(Response::new(pb::CreateTokenReply {
            token: model::format_bearer(&token.name, &secret),
            info: Some(convert::token_to_pb(&token)),
            write: Some(write),
        }))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let (meta, ext, r) = request.into_parts();
        Ok(Response::new(self.write(&meta, &ext, r.request_id, Command::RevokeToken { name: r.name }).await?))
    }

    async fn list(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensReply>, Status> {
        let r = request.into_inner();
        let tokens = self.read(r.consistency, |s| s.tokens().map(convert::token_to_pb).collect()).await?;
        Ok(Response::new(pb::ListTokensReply { tokens }))
    }
}
