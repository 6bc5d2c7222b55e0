//! Traces: `tracing` spans exported as OpenTelemetry spans over OTLP/gRPC, opt-in
//! (`--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! One trace follows a write from the CLI's call to the guest: the CLI injects a W3C
//! `traceparent` into the call's metadata ([`inject`]); the API server's layer continues
//! it ([`extract`]) and so does forwarding to the leader; the leader's decision stamps its
//! context into the proposal ([`current`]), so the trace crosses the log; every replica
//! and learner that applies the proposal continues it ([`continue_from`]) and remembers
//! it per resource ([`RecentTraces`]), where hostd picks it up for the reconcile pass and
//! its driver calls.
//!
//! Nothing is traced while traces are off: [`on`] is one relaxed load. A new trace is
//! sampled where it starts, at the door ([`arriving`], [`crate::traced_root_span!`]): an
//! unsampled call makes no span at all, and the spans of the write path are made only
//! where the current trace is sampled ([`recording`], [`crate::traced_span!`]).
//!
//! Export runs on a tokio runtime of its own (one thread): the SDK's batch processor
//! exports from a plain thread, where tonic's client would find no reactor.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::model::ResourceKey;
use controlplane::TraceParent;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData,
};
use opentelemetry_sdk::Resource;
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The metadata key that carries a trace between processes (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";
/// Spans waiting for export; past this the SDK drops new ones (and says so once).
pub const EXPORT_QUEUE_MAX: usize = 65_536;
/// Most spans in one export call.
pub const EXPORT_BATCH_MAX: usize = 4_096;
/// How often waiting spans are exported.
pub const EXPORT_EVERY: Duration = Duration::from_millis(500);
/// Longest one export call may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Traced resources a replica remembers for its host (the newest win).
pub const RECENT_TRACES_MAX: usize = 256;

static ON: AtomicBool = AtomicBool::new(false);
/// The share of new traces kept (an `f64`'s bits).
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0);

/// Whether this process exports traces.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Where and how this process exports traces.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The OTLP/gRPC collector (`http://host:4317`).
    pub endpoint: String,
    /// The share of new traces kept, 0.0 to 1.0; a call that arrives traced keeps its
    /// caller's choice.
    pub sample_ratio: f64,
    /// `service.name`: `drover-server`, `drover-hostd`, `drover-cli`.
    pub service: String,
    /// `service.instance.id`: which replica or host.
    pub instance: String,
}

/// Exporting traces; [`Exporting::shutdown`] (or drop) sends what is left.
#[derive(Debug)]
pub struct Exporting {
    provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Exporting {
    /// The tracer to hand to `tracing_opentelemetry::layer().with_tracer(..)`.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("drover")
    }

    /// Export what is waiting and stop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        ON.store(false, Ordering::Relaxed);
        if let Some(runtime) = self.runtime.take() {
            // Waits for the batch thread's last export, which runs on `runtime`.
            if let Err(e) = self.provider.shutdown() {
                tracing::debug!(error = %e, "trace export did not shut down cleanly");
            }
            runtime.shutdown_background();
        }
    }
}

impl Drop for Exporting {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start exporting traces as `config` says; [`on`] from then on.
pub fn start(config: &TraceConfig) -> Result<Exporting, String> {
    if !(0.0..=1.0).contains(&config.sample_ratio) {
        return Err(format!("the trace sample ratio {} is not between 0 and 1", config.sample_ratio));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| format!("the trace exporter's runtime: {e}"))?;
    let exporter = {
        // tonic's channel spawns its worker on the runtime it is built in.
        let _in = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("the OTLP exporter for {}: {e}", config.endpoint))?
    };
    let exporter = OnOwnRuntime { inner: Arc::new(exporter), runtime: runtime.handle().clone() };
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(EXPORT_QUEUE_MAX)
        .with_max_export_batch_size(EXPORT_BATCH_MAX)
        .with_scheduled_delay(EXPORT_EVERY)
        .build();
    let resource = Resource::builder()
        .with_service_name(config.service.clone())
        .with_attribute(KeyValue::new("service.instance.id", config.instance.clone()))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
        // New traces are sampled at the door (`sample_root`), before any span is made.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
        .build();
    SAMPLE_RATIO.store(config.sample_ratio.to_bits(), Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    Ok(Exporting { provider, runtime: Some(runtime) })
}

/// The OTLP exporter, its calls run on the exporter's own runtime.
#[derive(Debug)]
struct OnOwnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl opentelemetry_sdk::trace::SpanExporter for OnOwnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        match self.runtime.spawn(async move { inner.export(batch).await }).await {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(format!("the export task: {e}"))),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// A span of the write path: made only where the current trace is being recorded, else
/// `Span::none()` (free). Takes `tracing::info_span!`'s arguments.
#[macro_export]
macro_rules! traced_span {
    ($($arg:tt)*) => {
        if $crate::telemetry::recording() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// A span that starts a trace: made when traces are on and [`sample_root`] keeps this
/// one, else `Span::none()`. Takes `tracing::info_span!`'s arguments.
#[macro_export]
macro_rules! traced_root_span {
    ($($arg:tt)*) => {
        if $crate::telemetry::sample_root() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// Whether a span of `target` (a module path) is one of Drover's: only those are traced,
/// not the spans of its dependencies (openraft's, h2's).
pub fn drover_target(target: &str) -> bool {
    const CRATES: [&str; 5] = ["drover", "api", "raft", "hostd", "controlplane"];
    let krate = target.split("::").next().unwrap_or(target);
    CRATES.contains(&krate)
}

/// Whether a new trace starting here is kept: traces are on, and a draw falls within the
/// sample ratio.
pub fn sample_root() -> bool {
    if !on() {
        return false;
    }
    let ratio = f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// How a call that arrives is traced.
#[derive(Debug)]
pub enum Arriving {
    /// Not at all: traces are off, the caller's trace is not sampled, or a new one is not
    /// kept.
    Untraced,
    /// As a new trace.
    Root,
    /// As part of the caller's (sampled) trace.
    Child(Context),
}

/// How a call whose metadata is `headers` is traced.
pub fn arriving(headers: &http::HeaderMap) -> Arriving {
    if !on() {
        return Arriving::Untraced;
    }
    if headers.contains_key(TRACEPARENT) {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let sc = parent.span().span_context().clone();
        if sc.is_valid() {
            return if sc.is_sampled() { Arriving::Child(parent) } else { Arriving::Untraced };
        }
    }
    if sample_root() {
        Arriving::Root
    } else {
        Arriving::Untraced
    }
}

/// Whether the current span belongs to a trace being recorded (sampled).
pub fn recording() -> bool {
    on() && tracing::Span::current().context().span().span_context().is_sampled()
}

/// The current span's trace context, if it is being recorded: what a proposal carries.
pub fn current() -> Option<TraceParent> {
    current_of(&tracing::Span::current())
}

/// `span`'s trace context, if it is being recorded.
pub fn current_of(span: &tracing::Span) -> Option<TraceParent> {
    if !on() || span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// The remote context `parent` names.
fn remote(parent: &TraceParent) -> Context {
    let sc = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    Context::new().with_remote_span_context(sc)
}

/// Make `span` a child of `parent` (from a proposal, or a host's record of one); records
/// the trace id in its `trace_id` field, when it has one, so its log lines carry it.
pub fn continue_from(span: &tracing::Span, parent: &TraceParent) {
    let _ = span.set_parent(remote(parent));
    span.record("trace_id", tracing::field::display(hex(&parent.trace_id)));
}

/// Link `span` to another trace it also serves (a reconcile pass acting on several).
pub fn link(span: &tracing::Span, other: &TraceParent) {
    span.add_link(remote(other).span().span_context().clone());
}

/// Make `span` the span of a call that arrived `how` (not [`Arriving::Untraced`]): a child
/// of the caller's span, or a new trace's root; records the trace id in its `trace_id`
/// field.
pub fn continue_call(span: &tracing::Span, how: Arriving) {
    if let Arriving::Child(parent) = how {
        let _ = span.set_parent(parent);
    }
    let sc = span.context().span().span_context().clone();
    if sc.is_sampled() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
    }
}

/// Put the current span's context into an outgoing call's metadata (when traced).
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if !on() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

/// The hex form of a trace id, as logs and collectors print it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), value.parse())
        {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The traces of recently applied proposals, by the resources their events touched: a
/// host's replica fills it, and its reconcile pass continues the traces of the domains it
/// acts on. Bounded: the oldest go first. Filled only while traces are on, and only once
/// someone has taken from it (a control replica's is never read, so it notes nothing).
#[derive(Debug, Default)]
pub struct RecentTraces {
    entries: Mutex<VecDeque<(ResourceKey, TraceParent)>>,
    read: AtomicBool,
}

impl RecentTraces {
    /// `key` was changed by a proposal applied under `parent`.
    pub fn note(&self, key: ResourceKey, parent: TraceParent) {
        if !self.read.load(Ordering::Relaxed) {
            return;
        }
        let mut entries = self.entries.lock().expect("recent traces lock");
        entries.retain(|(k, _)| *k != key);
        if entries.len() == RECENT_TRACES_MAX {
            entries.pop_front();
        }
        entries.push_back((key, parent));
    }

    /// Everything noted since the last take, oldest first (the first take starts the
    /// noting).
    pub fn take(&self) -> Vec<(ResourceKey, TraceParent)> {
        self.read.store(true, Ordering::Relaxed);
        self.entries.lock().expect("recent traces lock").drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(n: u8) -> TraceParent {
        TraceParent { trace_id: [n; 16], span_id: [n; 8], flags: 1 }
    }

    #[test]
    fn recent_traces_keep_the_newest_per_resource_and_stay_bounded() {
        let recent = RecentTraces::default();
        recent.note(ResourceKey::Domain("web".into()), parent(1));
        assert!(recent.take().is_empty(), "nothing is noted before anyone reads");
        recent.note(ResourceKey::Domain("web".into()), parent(1));
        recent.note(ResourceKey::Domain("web".into()), parent(2));
        recent.note(ResourceKey::Domain("db".into()), parent(3));
        let taken = recent.take();
        assert_eq!(
            taken,
            vec![
                (ResourceKey::Domain("web".into()), parent(2)),
                (ResourceKey::Domain("db".into()), parent(3))
            ]
        );
        assert!(recent.take().is_empty(), "taken once");
        for i in 0..RECENT_TRACES_MAX + 10 {
            recent.note(ResourceKey::Domain(format!("d{i}")), parent(1));
        }
        let taken = recent.take();
        assert_eq!(taken.len(), RECENT_TRACES_MAX);
        assert_eq!(taken[0].0, ResourceKey::Domain("d10".into()), "the oldest went first");
    }

    #[test]
    fn only_drovers_own_spans_are_traced() {
        assert!(drover_target("raft::proposer"));
        assert!(drover_target("drover"));
        assert!(drover_target("hostd::agent"));
        assert!(!drover_target("openraft::raft"));
        assert!(!drover_target("h2::codec::framed_write"));
        assert!(!drover_target("rafts"));
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x0a, 0xff, 0x00]), "0aff00");
    }

    #[test]
    fn nothing_is_traced_while_traces_are_off() {
        assert!(!on());
        assert!(!recording());
        assert!(!sample_root());
        assert_eq!(current(), None);
        let mut headers = http::HeaderMap::new();
        headers
            .insert(TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        assert!(matches!(arriving(&headers), Arriving::Untraced));
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject(&mut metadata);
        assert!(metadata.get(TRACEPARENT).is_none());
    }
}
