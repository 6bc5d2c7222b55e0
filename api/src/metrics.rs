//! The public API's metrics: a tower layer around every gRPC service of a replica counts
//! calls by method and status code (`drover_api_requests_total`), times them
//! (`drover_api_request_seconds`: until the response's headers, so for a stream, until it
//! starts) and counts those in flight (`drover_api_requests_in_flight`). Recorded only
//! once `--metrics-listen` installs an exporter.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{counter, gauge, histogram};
use tonic::codegen::http;

pub const REQUESTS_TOTAL: &str = "drover_api_requests_total";
pub const REQUEST_SECONDS: &str = "drover_api_request_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "drover_api_requests_in_flight";

/// The help text of the API's series (call once an exporter is installed).
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        metrics::Unit::Count,
        "gRPC calls answered, by method and status code"
    );
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "From a call's arrival to its response's headers (a stream: until it starts)"
    );
    metrics::describe_gauge!(REQUESTS_IN_FLIGHT, "gRPC calls being answered");
}

/// Wraps each service in [`Metered`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

/// The gRPC status a response carries in its headers (an error answered at once); OK
/// when they carry none (success: the status follows in the trailers).
pub(crate) fn grpc_code<B>(response: &http::Response<B>) -> tonic::Code {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    tonic::Code::from(code)
}

/// [`grpc_code`]'s name, as the series label it.
fn code_of<B>(response: &http::Response<B>) -> &'static str {
    match grpc_code(response) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Metered<S>
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
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        gauge!(REQUESTS_IN_FLIGHT).increment(1.0);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            gauge!(REQUESTS_IN_FLIGHT).decrement(1.0);
            let code = match &response {
                Ok(r) => code_of(r),
                Err(_) => "TRANSPORT",
            };
            // Only methods that exist name a series: a made-up path (answered
            // UNIMPLEMENTED) must not grow the label set without bound.
            let method = if code == "UNIMPLEMENTED" { "unknown".to_owned() } else { path };
            counter!(REQUESTS_TOTAL, "method" => method.clone(), "code" => code).increment(1);
            histogram!(REQUEST_SECONDS, "method" => method).record(started.elapsed().as_secs_f64());
            response
        })
    }
}
