//! Logging set-up: `tracing` with JSON output in production and a readable
//! format locally. The sink is a parameter so tests can silence it.
//!
//! Optionally (`log.otlp_endpoint`), every request's span is also exported
//! as an OpenTelemetry trace over OTLP/HTTP (protobuf) by the SDK's batch
//! exporter, which runs on a thread of its own with a bounded queue
//! (spans beyond it are dropped, never waited for). A request that arrives
//! with a W3C `traceparent` continues that trace: its span's parent is the
//! caller's span (`http::router`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};
use tracing_subscriber::{
    fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

use crate::config::{LogFormat, LogSettings};

/// The OTLP exporter while it runs; [`Traces::shutdown`] sends what is
/// still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Flushes the queued spans and stops the exporter's thread. It blocks
    /// (up to the exporter's timeout): call it off the async threads.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the
/// configured level. Calling it twice is harmless (the second call is ignored),
/// which lets every test in one binary ask for logging. The readable format
/// is coloured only when `colour` (a terminal reads it): a file or a log
/// collector gets plain text. With `log.otlp_endpoint` set, request spans
/// are exported there too (the returned [`Traces`]); an endpoint the
/// exporter cannot be built for is an error.
pub fn init<W>(settings: &LogSettings, sink: W, colour: bool) -> anyhow::Result<Option<Traces>>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(sink)
        .with_ansi(colour);
    let fmt = match settings.format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    };
    let endpoint = settings.otlp_endpoint.trim();
    if endpoint.is_empty() {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init();
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("log.otlp_endpoint = {endpoint:?}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("registrar")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    concat!(env!("CARGO_PKG_VERSION"), "+", env!("REGISTRAR_GIT_SHA")),
                ))
                .build(),
        )
        .build();
    let traces = tracing_opentelemetry::layer().with_tracer(provider.tracer("registrar"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(traces)
        .try_init();
    Ok(Some(Traces { provider }))
}
