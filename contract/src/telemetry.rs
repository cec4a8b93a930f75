//! How every binary of the pipeline logs and traces (feature `process`): JSON log lines on
//! stderr filtered by `RUST_LOG` (default `info`), and — only when a collector is configured
//! with the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` —
//! the `tracing` spans at `INFO` and above exported as OpenTelemetry traces over OTLP/HTTP.
//!
//! The SDK reads the other `OTEL_*` variables itself: `OTEL_SERVICE_NAME` (default: the name the
//! binary passes), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` with `OTEL_TRACES_SAMPLER_ARG`
//! (default: always on, children follow their parent), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`. `OTEL_SDK_DISABLED=true` turns export off.
//!
//! Context crosses process boundaries as W3C `traceparent` strings: [`set_parent`] and
//! [`add_link`] read one, [`traceparent`] writes one. Without export they do nothing and
//! [`traceparent`] is `None`, so nothing downstream carries a context no collector will see.

use crate::process::LOG_FILTER_ENV;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The standard variables the operator sets from `spec.tracing`; the SDK reads them.
pub mod env {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended).
    pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// The collector's URL for traces, taken as it is.
    pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
    pub const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    pub const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
    pub const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
    /// Every one of them.
    pub const ALL: [&str; 8] = [
        ENDPOINT,
        TRACES_ENDPOINT,
        SERVICE_NAME,
        SAMPLER,
        SAMPLER_ARG,
        RESOURCE_ATTRIBUTES,
        HEADERS,
        SDK_DISABLED,
    ];
}

/// Either of these names a collector, and turns export on.
pub const ENDPOINT_ENVS: [&str; 2] = [env::TRACES_ENDPOINT, env::ENDPOINT];

/// The W3C trace-context header (HTTP and Kafka alike).
pub const TRACEPARENT: &str = "traceparent";

/// Held by `main` for the life of the process: dropping it flushes the spans not yet exported.
#[derive(Debug)]
#[must_use = "dropping it at once stops the export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Set once by [`init`] when spans go to a collector.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans go to a collector: spans made only for the trace (one per record or change)
/// are not made otherwise.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing the last spans failed: {e}");
        }
    }
}

/// Whether the environment asks for export: an endpoint set, and the SDK not disabled.
fn export_wanted(var: impl Fn(&str) -> Option<String>) -> bool {
    let disabled = var(env::SDK_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    !disabled
        && ENDPOINT_ENVS
            .iter()
            .any(|name| var(name).is_some_and(|v| !v.trim().is_empty()))
}

/// Logging for `service`, and trace export when the environment asks for it. Call once, first
/// thing in `main`, inside the Tokio runtime.
///
/// # Panics
/// When a subscriber is already installed.
pub fn init(service: &'static str) -> Telemetry {
    // One TLS provider for every client of the process (kube's, reqwest's, the exporter's, which
    // has none of its own); already installed (by a test harness) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_filter(
            EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info")),
        );
    let var = |name: &str| std::env::var(name).ok();
    let (provider, failure) = if export_wanted(var) {
        match provider(service) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    if let Some(e) = failure {
        tracing::error!(error = %e, "trace export is configured but could not start; going on without it");
    } else if provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

fn provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os(env::SERVICE_NAME).is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        key.eq_ignore_ascii_case(TRACEPARENT).then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The remote span context a `traceparent` names, if it is well formed.
fn remote(traceparent: &str) -> Option<opentelemetry::Context> {
    let cx = TraceContextPropagator::new().extract(&One(traceparent.trim()));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the context `traceparent` names (a client's header, a Kafka
/// record's). Malformed or absent: `span` stays a root.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(remote) {
        // Fails only when the span is already started with another parent or is disabled;
        // either way the span keeps what it has.
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the context `traceparent` names (the many traces one bulk request
/// serves; the change a relay republishes after a restart).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = remote(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// The `traceparent` of `span`, for the next hop; `None` when no trace is being exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Header(None);
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

struct Header(Option<String>);

impl Injector for Header {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn export_needs_an_endpoint_and_is_not_disabled() {
        assert!(!export_wanted(env(&[])));
        assert!(!export_wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(export_wanted(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(export_wanted(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces"
        )])));
        assert!(!export_wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
    }

    #[test]
    fn a_traceparent_is_read_only_when_well_formed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = remote(good).expect("valid traceparent");
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert!(remote(bad).is_none(), "{bad:?} must not be a parent");
        }
    }

    #[test]
    fn without_export_spans_have_no_traceparent() {
        let span = tracing::info_span!("no subscriber");
        set_parent(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(traceparent(&span), None);
    }
}
