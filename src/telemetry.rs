//! Logging set-up: `tracing` with JSON output in production and a readable
//! format locally. The sink is a parameter so tests can silence it.

use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the
/// configured level. Calling it twice is harmless (the second call is ignored),
/// which lets every test in one binary ask for logging. The readable format
/// is coloured only when `colour` (a terminal reads it): a file or a log
/// collector gets plain text.
pub fn init<W>(settings: &LogSettings, sink: W, colour: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_ansi(colour);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
