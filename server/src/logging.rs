//! The `herald-server` binary's logs on stderr, in the format `HERALD_LOG_FORMAT`
//! names ([`LogFormat`]).
//!
//! Text is for people at a terminal, so it is coloured only there: escape codes in a
//! file or in journald are noise to whoever greps them. JSON is for log shippers:
//! one object per line, with the event's fields at the top level and the node id on
//! every line, so lines from many nodes stay apart after they are merged. The id is
//! added by [`WithNode`] around tracing-subscriber's JSON formatter rather than as a
//! root span, because a span is not inherited by the tasks a node spawns.
//!
//! An embedding host installs its own subscriber; nothing here runs inside
//! [`crate::Herald`].

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset: the node's own news, and only sqlx's
/// warnings (it logs every slow statement at info).
const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Installs the process's subscriber: `format` on stderr, filtered by `RUST_LOG`,
/// with `node` on every JSON line.
pub fn init(format: LogFormat, node: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(WithNode::new(node))
            .init(),
    }
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// tracing-subscriber's JSON lines, flattened (`message` and the fields at the top
/// level), with `"node":"<id>"` first on each.
pub struct WithNode {
    /// The id as a JSON string, quoted and escaped once.
    node: String,
    inner: Format<Json>,
}

impl WithNode {
    /// The JSON format for node `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: serde_json::to_string(node).expect("a string serialises"),
            inner: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_span_list(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for WithNode
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // An event with a `node` field of its own already says which node it is;
        // a second `node` key would make the object ambiguous.
        let own_node = event.metadata().fields().field("node").is_some();
        match line.strip_prefix('{') {
            Some(rest) if !own_node => write!(writer, "{{\"node\":{},{rest}", self.node),
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn json_lines(emit: impl FnOnce()) -> Vec<Value> {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .fmt_fields(JsonFields::new())
            .event_format(WithNode::new("edge-\"1\""))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_carry_node_level_target_message_and_fields() {
        let lines = json_lines(|| {
            tracing::warn!(error = "refused", attempt = 3, "store unavailable");
            tracing::info!("plain");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first = &lines[0];
        assert_eq!(first["node"], "edge-\"1\"");
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["target"], module_path!());
        assert_eq!(first["message"], "store unavailable");
        assert_eq!(first["error"], "refused");
        assert_eq!(first["attempt"], 3);
        assert!(first["timestamp"].is_string(), "{first}");
        assert_eq!(lines[1]["message"], "plain");
        assert_eq!(lines[1]["node"], "edge-\"1\"");
    }

    #[test]
    fn an_event_naming_its_node_has_one_node_key() {
        let lines = json_lines(|| tracing::info!(node = "n-7", "node ready"));
        assert_eq!(lines[0]["node"], "n-7");
        assert_eq!(lines[0]["message"], "node ready");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
