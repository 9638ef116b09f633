//! The daemon's log: `tracing` events, one line per event on stderr, in logfmt or JSON.
//!
//! The daemon logs through `tracing`; records of crates that use `log` (aya) arrive through
//! `tracing-log`. Each line holds `ts`, `level`,
//! `msg`, then `source` for events from outside the daemon (their target), then the event's
//! fields in order. This module only formats: filtering and writing are tracing-subscriber's.
use std::fmt::{self, Write as _};

use anyhow::Context as _;
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// The daemon's own target (its crate name); its events need no `source` key.
const OWN_TARGET: &str = "apptheus";

/// Keys the line writes itself. An event field with one of these names is renamed with
/// [`RENAMED_KEY_PREFIX`] rather than dropped or allowed to shadow ours.
const RESERVED_KEYS: [&str; 4] = ["ts", "level", "msg", "source"];
const RENAMED_KEY_PREFIX: &str = "fields.";

/// How much is logged (`--log.level`, which `cli` parses into it).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The filter that lets this level and the more severe ones through.
    pub fn level_filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }

    /// The same filter for records of crates that log through `log` (aya).
    pub fn log_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Error => log::LevelFilter::Error,
        }
    }
}

/// How a log line is written (`--log.format`, which `cli` parses into it).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// key=value pairs, one record a line.
    Logfmt,
    /// One JSON object a line.
    Json,
}

/// Install the stderr subscriber for `level` and the more severe levels, and the bridge that
/// turns `log` records into events. Fails if either is installed already.
pub fn init(level: LogLevel, format: LogFormat) -> anyhow::Result<()> {
    let filter = level.level_filter();
    tracing_log::LogTracer::init_with_filter(level.log_filter())
        .context("cannot install the log bridge: a global logger is already installed")?;
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .event_format(Line { format })
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .context("cannot install the log subscriber: one is already installed")
}

/// The line format of every event.
#[derive(Clone, Copy, Debug)]
pub struct Line {
    pub format: LogFormat,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events bridged from `log` carry their real target in `log.*` fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut pairs: Vec<(String, Value)> = vec![
            (
                "ts".into(),
                Value::Text(
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                ),
            ),
            (
                "level".into(),
                Value::Text(level_name(*meta.level()).into()),
            ),
            (
                "msg".into(),
                Value::Text(fields.message.unwrap_or_default()),
            ),
        ];
        if !is_own_target(meta.target()) {
            pairs.push(("source".into(), Value::Text(meta.target().into())));
        }
        pairs.extend(fields.pairs);
        let line = match self.format {
            LogFormat::Logfmt => logfmt_line(&pairs),
            LogFormat::Json => json_line(&pairs),
        };
        writeln!(writer, "{line}")
    }
}

/// A field's value: numbers and booleans keep their type in JSON, the rest is text.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Text(String),
    Json(serde_json::Value),
}

/// The message and the other fields of one event, in order.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    pairs: Vec<(String, Value)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                Value::Text(t) => t,
                Value::Json(j) => j.to_string(),
            });
            return;
        }
        // The `log` bridge's own fields (target, module, file, line).
        if name.starts_with("log.") {
            return;
        }
        let mut key = name.to_string();
        if RESERVED_KEYS.contains(&name) {
            key.insert_str(0, RENAMED_KEY_PREFIX);
        }
        self.pairs.push((key, value));
    }
}

impl tracing::field::Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those stay text ("NaN", "inf").
        let v = match serde_json::Number::from_f64(value) {
            Some(n) => Value::Json(serde_json::Value::Number(n)),
            None => Value::Text(value.to_string()),
        };
        self.push(field, v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::Json(value.into()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::Json(value.into()));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        // JSON numbers beyond 64 bits lose precision in most readers: keep those as text.
        let v = match i64::try_from(value) {
            Ok(small) => Value::Json(small.into()),
            Err(_) => Value::Text(value.to_string()),
        };
        self.push(field, v);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = match u64::try_from(value) {
            Ok(small) => Value::Json(small.into()),
            Err(_) => Value::Text(value.to_string()),
        };
        self.push(field, v);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Json(value.into()));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::Text(value.into()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::Text(display_text(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` fields and the message arrive here as Debug wrappers of their Display.
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.push(field, Value::Text(text));
    }
}

/// `value` as text. Unlike `to_string`, does not panic when a `Display` implementation reports
/// an error: logging a value must not bring the daemon down.
fn display_text(value: &dyn fmt::Display) -> String {
    let mut text = String::new();
    let _ = write!(text, "{value}");
    text
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// `apptheus` and its modules, `apptheus::...`; not `apptheus_common` or `apptheus_ebpf`.
fn is_own_target(target: &str) -> bool {
    target == OWN_TARGET
        || target
            .strip_prefix(OWN_TARGET)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// `key=value key="spaced value" ...`
fn logfmt_line(fields: &[(String, Value)]) -> String {
    let mut line = String::new();
    for (key, value) in fields {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&logfmt_key(key));
        line.push('=');
        match value {
            Value::Text(text) => push_logfmt_value(&mut line, text),
            // Numbers, booleans and null print as JSON does, which never needs quotes.
            Value::Json(other) => line.push_str(&other.to_string()),
        }
    }
    line
}

/// A key cannot be quoted in logfmt: characters that would break the pair become '_'.
fn logfmt_key(key: &str) -> String {
    if key.is_empty() {
        return "_".to_string();
    }
    key.chars()
        .map(|c| if needs_quotes(c) { '_' } else { c })
        .collect()
}

/// Characters that would end or confuse an unquoted logfmt value.
fn needs_quotes(c: char) -> bool {
    c == '=' || c == '"' || c.is_whitespace() || c.is_control()
}

/// Appends `value`, quoted and escaped only when it has to be.
fn push_logfmt_value(line: &mut String, value: &str) {
    if !value.is_empty() && !value.chars().any(needs_quotes) {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            // Other control characters and the Unicode line separators would break the line
            // on a terminal or in a line-oriented reader.
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// `{"key":value,...}` in the fields' order (ts, level and msg first), which a
/// serde_json::Map would sort.
fn json_line(fields: &[(String, Value)]) -> String {
    let mut line = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let value = match value {
            Value::Text(t) => serde_json::Value::String(t.clone()),
            Value::Json(j) => j.clone(),
        };
        // Serializing a string or a serde_json::Value cannot fail.
        line.push_str(&serde_json::to_string(key).unwrap_or_default());
        line.push(':');
        line.push_str(&serde_json::to_string(&value).unwrap_or_default());
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects the formatted lines of the events logged inside `f`.
    fn lines(format: LogFormat, max: LogLevel, f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(max.level_filter())
            .with_writer(move || out.clone())
            .event_format(Line { format })
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    /// The line without its timestamp (the first pair).
    fn rest(line: &str) -> &str {
        line.split_once(' ').unwrap().1
    }

    #[test]
    fn logfmt_example() {
        let l = lines(LogFormat::Logfmt, LogLevel::Info, || {
            tracing::info!(container = "starter_42", pid = 42, "container started");
        });
        assert_eq!(l.len(), 1);
        assert!(l[0].starts_with("ts=20"), "{}", l[0]);
        assert!(l[0].contains('T') && l[0].split(' ').next().unwrap().ends_with('Z'));
        assert_eq!(
            rest(&l[0]),
            "level=info msg=\"container started\" container=starter_42 pid=42"
        );
    }

    #[test]
    fn json_example_and_types() {
        let l = lines(LogFormat::Json, LogLevel::Debug, || {
            let e = std::io::Error::other("disk on fire");
            tracing::debug!(
                u = 7u64,
                i = -3i64,
                f = 0.25,
                nan = f64::NAN,
                b = true,
                big = u128::MAX,
                small128 = -5i128,
                s = "text",
                dbg = ?Some(1),
                disp = %e,
                err = &e as &(dyn std::error::Error + 'static),
                "m \"x\""
            );
        });
        let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
        assert!(l[0].starts_with("{\"ts\":"), "{}", l[0]);
        assert_eq!(v["level"], "debug");
        assert_eq!(v["msg"], "m \"x\"");
        assert_eq!(v["u"], 7);
        assert_eq!(v["i"], -3);
        assert_eq!(v["f"], 0.25);
        assert_eq!(v["nan"], "NaN");
        assert_eq!(v["b"], true);
        assert_eq!(v["big"], u128::MAX.to_string());
        assert_eq!(v["small128"], -5);
        assert_eq!(v["s"], "text");
        assert_eq!(v["dbg"], "Some(1)");
        assert_eq!(v["disp"], "disk on fire");
        assert_eq!(v["err"], "disk on fire");
        assert!(v.get("source").is_none());
    }

    #[test]
    fn levels_filter_and_name() {
        let l = lines(LogFormat::Logfmt, LogLevel::Warn, || {
            tracing::error!("e");
            tracing::warn!("w");
            tracing::info!("i");
            tracing::debug!("d");
        });
        let levels: Vec<&str> = l
            .iter()
            .map(|l| rest(l).split(' ').next().unwrap())
            .collect();
        assert_eq!(levels, ["level=error", "level=warn"]);
    }

    #[test]
    fn logfmt_quoting_and_escaping() {
        let l = lines(LogFormat::Logfmt, LogLevel::Info, || {
            tracing::info!(
                plain = "a",
                empty = "",
                spaced = "a b",
                quoted = "say \"hi\"",
                eq = "a=b",
                nl = "a\nb\\c",
                ctl = "\u{1}\u{2028}",
                "m"
            );
        });
        assert_eq!(
            rest(&l[0]),
            "level=info msg=m plain=a empty=\"\" spaced=\"a b\" quoted=\"say \\\"hi\\\"\" \
             eq=\"a=b\" nl=\"a\\nb\\\\c\" ctl=\"\\u0001\\u2028\""
        );
    }

    #[test]
    fn reserved_keys_are_renamed() {
        let l = lines(LogFormat::Json, LogLevel::Info, || {
            tracing::info!(msg = "mine", level = 3, "m");
        });
        let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
        assert_eq!(v["msg"], "m");
        assert_eq!(v["level"], "info");
        assert_eq!(v["fields.msg"], "mine");
        assert_eq!(v["fields.level"], 3);
    }

    #[test]
    fn source_for_foreign_targets_only() {
        let l = lines(LogFormat::Logfmt, LogLevel::Info, || {
            tracing::info!(target: "apptheus::gateway", "own");
            tracing::info!(target: "apptheus_ebpf", pid = 1, "foreign");
        });
        assert!(!l[0].contains("source="), "{}", l[0]);
        assert!(
            l[1].ends_with(" msg=foreign source=apptheus_ebpf pid=1"),
            "{}",
            l[1]
        );
    }

    #[test]
    fn log_records_arrive_with_their_target() {
        // What aya does: a `log` record, bridged by tracing-log.
        let l = lines(LogFormat::Logfmt, LogLevel::Info, || {
            let record = log::Record::builder()
                .args(format_args!("from the kernel"))
                .level(log::Level::Warn)
                .target("apptheus_ebpf")
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        assert_eq!(
            rest(&l[0]),
            "level=warn msg=\"from the kernel\" source=apptheus_ebpf"
        );
    }

    #[test]
    fn a_failing_display_does_not_panic() {
        struct Bad;
        impl fmt::Display for Bad {
            fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
                Err(fmt::Error)
            }
        }
        let l = lines(LogFormat::Logfmt, LogLevel::Info, || {
            tracing::info!(v = %Bad, "m");
        });
        assert!(rest(&l[0]).starts_with("level=info msg=m v="), "{}", l[0]);
    }
}
