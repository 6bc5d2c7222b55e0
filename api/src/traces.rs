//! The API's traces: a tower layer around every gRPC service of a replica opens one span
//! per traced call (the public API, and the replication service's writes, forwards and
//! joins): a child of the caller's span when its metadata carries a sampled trace
//! (`traceparent`), else a new trace's root when the sample ratio keeps it. Raft's
//! own consensus traffic between replicas (append, vote, snapshot) is never traced.
//! Nothing happens while traces are off.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use raft::telemetry;
use tonic::codegen::http;
use tracing::Instrument;

/// Raft's consensus service, by path: never traced.
const CONSENSUS_PREFIX: &str = "/drover.raft.v1.Raft/";

/// Wraps each service in [`Traced`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TracesLayer;

impl<S> tower::Layer<S> for TracesLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let how = match path.starts_with(CONSENSUS_PREFIX) {
            true => telemetry::Arriving::Untraced,
            false => telemetry::arriving(request.headers()),
        };
        if matches!(how, telemetry::Arriving::Untraced) {
            return Box::pin(self.inner.call(request));
        }
        let span = tracing::info_span!(
            "call",
            otel.name = %path,
            otel.kind = "server",
            rpc.method = %path,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        telemetry::continue_call(&span, how);
        let response = span.in_scope(|| self.inner.call(request));
        let recorded = span.clone();
        Box::pin(
            async move {
                let response = response.await;
                if let Ok(r) = &response {
                    recorded.record("rpc.grpc.status_code", crate::metrics::grpc_code(r) as i32);
                }
                response
            }
            .instrument(span),
        )
    }
}
