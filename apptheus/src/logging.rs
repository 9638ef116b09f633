//! The daemon's logger: one line per record on stderr, in logfmt or JSON.
//!
//! Everything logs through the `log` facade: the daemon itself, the crates it uses, and the eBPF
//! programs (aya-log forwards their records). Records from outside the daemon carry a `source`
//! key naming their target, so that a reader can tell them apart.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use log::kv::{self, VisitSource, VisitValue};

use crate::cli::{LogFormat, LogLevel};

/// The daemon's own `log` target (its crate name); its records need no `source` key.
const OWN_TARGET: &str = "apptheus";

/// Keys the logger writes itself. A record's key-value with one of these names is renamed with
/// [`RENAMED_KEY_PREFIX`] rather than dropped or allowed to shadow ours.
const RESERVED_KEYS: [&str; 4] = ["ts", "level", "msg", "source"];
const RENAMED_KEY_PREFIX: &str = "fields.";

/// Installs the stderr logger as the global logger, letting through `level` and the more severe
/// levels. Fails if a global logger is already installed.
pub fn init(level: LogLevel, format: LogFormat) -> anyhow::Result<()> {
    let filter = level.level_filter();
    log::set_boxed_logger(Box::new(StderrLogger { format, filter }))
        .context("cannot install the logger: a global logger is already installed")?;
    log::set_max_level(filter);
    Ok(())
}

struct StderrLogger {
    format: LogFormat,
    filter: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.filter
    }

    fn log(&self, record: &log::Record) {
        // The `log` macros check the global max level, but aya-log and direct callers of
        // `log::logger().log()` may not: filter here too.
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format_record(
            self.format,
            SystemTime::now(),
            record.level(),
            record.target(),
            record.args(),
            record.key_values(),
        );
        line.push('\n');
        // One write_all under the lock: lines of different threads cannot interleave, and a
        // line below PIPE_BUF reaches a pipe in one piece. A failed write (stderr closed, full
        // disk) has nowhere to be reported; dropping the line beats crashing the daemon.
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().lock().flush();
    }
}

/// Formats one record as a line (without its newline) in `format`. Pure, for testing.
pub fn format_record(
    format: LogFormat,
    ts: SystemTime,
    level: log::Level,
    target: &str,
    msg: &fmt::Arguments<'_>,
    kvs: &dyn kv::Source,
) -> String {
    let mut fields: Vec<(String, serde_json::Value)> = vec![
        ("ts".to_string(), rfc3339_millis(ts).into()),
        ("level".to_string(), level_name(level).into()),
        ("msg".to_string(), display_text(msg).into()),
    ];
    if !is_own_target(target) {
        fields.push(("source".to_string(), target.into()));
    }
    fields.extend(collect_key_values(kvs));
    match format {
        LogFormat::Logfmt => logfmt_line(&fields),
        LogFormat::Json => json_line(&fields),
    }
}

/// `value` as text. Unlike `to_string`, does not panic when a `Display` implementation reports
/// an error: logging a value must not bring the daemon down.
fn display_text(value: &dyn fmt::Display) -> String {
    let mut text = String::new();
    let _ = write!(text, "{value}");
    text
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// `apptheus` and its modules, `apptheus::...`; not `apptheus_common` or `apptheus_ebpf`.
fn is_own_target(target: &str) -> bool {
    target == OWN_TARGET
        || target
            .strip_prefix(OWN_TARGET)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The record's key-values in order, typed as JSON values (logfmt renders them as text).
fn collect_key_values(kvs: &dyn kv::Source) -> Vec<(String, serde_json::Value)> {
    let mut collector = KeyValueCollector(Vec::new());
    // Our visitor never fails; a source that fails part-way still yields what it gave.
    let _ = kvs.visit(&mut collector);
    collector.0
}

struct KeyValueCollector(Vec<(String, serde_json::Value)>);

impl<'kvs> VisitSource<'kvs> for KeyValueCollector {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let mut key = key.as_str().to_string();
        if RESERVED_KEYS.contains(&key.as_str()) {
            key.insert_str(0, RENAMED_KEY_PREFIX);
        }
        self.0.push((key, json_value(&value)));
        Ok(())
    }
}

/// A key-value's value as JSON: numbers and booleans keep their type, anything else (strings,
/// `Display`/`Debug` captures, errors) becomes its text.
fn json_value(value: &kv::Value<'_>) -> serde_json::Value {
    let mut visitor = JsonValueVisitor(serde_json::Value::Null);
    if value.visit(&mut visitor).is_err() {
        return serde_json::Value::String(display_text(value));
    }
    visitor.0
}

struct JsonValueVisitor(serde_json::Value);

impl<'v> VisitValue<'v> for JsonValueVisitor {
    fn visit_any(&mut self, value: kv::Value) -> Result<(), kv::Error> {
        self.0 = serde_json::Value::String(display_text(&value));
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.0 = serde_json::Value::Null;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), kv::Error> {
        // JSON numbers beyond 64 bits lose precision in most readers: keep those as text.
        self.0 = match u64::try_from(value) {
            Ok(small) => small.into(),
            Err(_) => value.to_string().into(),
        };
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), kv::Error> {
        self.0 = match i64::try_from(value) {
            Ok(small) => small.into(),
            Err(_) => value.to_string().into(),
        };
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        // JSON has no NaN or infinity: those stay text ("NaN", "inf").
        self.0 = match serde_json::Number::from_f64(value) {
            Some(number) => serde_json::Value::Number(number),
            None => value.to_string().into(),
        };
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_char(&mut self, value: char) -> Result<(), kv::Error> {
        self.0 = value.to_string().into();
        Ok(())
    }
}

/// `key=value key="spaced value" ...`
fn logfmt_line(fields: &[(String, serde_json::Value)]) -> String {
    let mut line = String::new();
    for (key, value) in fields {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&logfmt_key(key));
        line.push('=');
        match value {
            serde_json::Value::String(text) => push_logfmt_value(&mut line, text),
            // Numbers, booleans and null print as JSON does, which never needs quotes.
            other => line.push_str(&other.to_string()),
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

/// `{"key":value,...}` in the fields' order. Written field by field rather than through a
/// serde_json::Map, which would sort the keys (ts, level and msg must come first).
fn json_line(fields: &[(String, serde_json::Value)]) -> String {
    let mut line = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        // Serializing a string or a serde_json::Value cannot fail.
        line.push_str(&serde_json::to_string(key).unwrap_or_default());
        line.push(':');
        line.push_str(&serde_json::to_string(value).unwrap_or_default());
    }
    line.push('}');
    line
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T05:05:26.123Z`.
fn rfc3339_millis(ts: SystemTime) -> String {
    let millis = unix_millis(ts);
    let secs = millis.div_euclid(1000);
    let milli = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sec_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sec_of_day / 3600,
        sec_of_day / 60 % 60,
        sec_of_day % 60,
    )
}

/// Milliseconds since the Unix epoch, floored, negative before it (a clock set far back must
/// not panic).
fn unix_millis(ts: SystemTime) -> i128 {
    let nanos = match ts.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    nanos.div_euclid(1_000_000)
}

/// The proleptic Gregorian date of `days` since 1970-01-01: Howard Hinnant's civil_from_days
/// (https://howardhinnant.github.io/date_algorithms.html), which counts in 400-year eras that
/// start on March 1st so that the leap day falls at the end of the year.
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11]
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // [1, 31]
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    }; // [1, 12]
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    // Both fit: day is in [1, 31] and month in [1, 12].
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log as _;
    use std::time::Duration;

    fn at(millis: i64) -> SystemTime {
        if millis >= 0 {
            UNIX_EPOCH + Duration::from_millis(millis as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(millis.unsigned_abs())
        }
    }

    /// 2026-11-22T05:05:26.123Z
    const EXAMPLE_MILLIS: i64 = 1_795_323_926_123;

    #[test]
    fn timestamps() {
        let cases: &[(SystemTime, &str)] = &[
            (UNIX_EPOCH, "1970-01-01T00:00:00.000Z"),
            (at(EXAMPLE_MILLIS), "2026-11-22T05:05:26.123Z"),
            (at(951_782_400_000), "2000-02-29T00:00:00.000Z"),
            (
                at(1_709_164_800_000 + 86_399_999),
                "2024-02-29T23:59:59.999Z",
            ),
            (at(1_709_251_200_000), "2024-03-01T00:00:00.000Z"),
            (at(4_107_542_399_000), "2100-02-28T23:59:59.000Z"),
            (at(4_107_542_400_000), "2100-03-01T00:00:00.000Z"),
            (at(1_735_689_599_999), "2024-12-31T23:59:59.999Z"),
            (at(-1), "1969-12-31T23:59:59.999Z"),
            (at(-86_400_000), "1969-12-31T00:00:00.000Z"),
            (
                UNIX_EPOCH + Duration::from_nanos(1_999_999),
                "1970-01-01T00:00:00.001Z",
            ),
            (
                UNIX_EPOCH - Duration::from_nanos(1),
                "1969-12-31T23:59:59.999Z",
            ),
        ];
        for (ts, want) in cases {
            assert_eq!(rfc3339_millis(*ts), *want, "{ts:?}");
        }
    }

    #[test]
    fn civil_from_days_on_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
    }

    fn format(
        format: LogFormat,
        level: log::Level,
        target: &str,
        msg: fmt::Arguments<'_>,
        kvs: &dyn kv::Source,
    ) -> String {
        format_record(format, at(EXAMPLE_MILLIS), level, target, &msg, kvs)
    }

    #[test]
    fn logfmt_example() {
        let kvs: &[(&str, kv::Value)] = &[
            ("container", kv::Value::from("exec_42")),
            ("pid", kv::Value::from(42u32)),
        ];
        let line = format(
            LogFormat::Logfmt,
            log::Level::Info,
            "apptheus::registry",
            format_args!("container started"),
            &kvs,
        );
        assert_eq!(
            line,
            r#"ts=2026-11-22T05:05:26.123Z level=info msg="container started" container=exec_42 pid=42"#
        );
    }

    #[test]
    fn json_example() {
        let kvs: &[(&str, kv::Value)] = &[
            ("container", kv::Value::from("exec_42")),
            ("pid", kv::Value::from(42u32)),
        ];
        let line = format(
            LogFormat::Json,
            log::Level::Info,
            "apptheus",
            format_args!("container started"),
            &kvs,
        );
        assert_eq!(
            line,
            r#"{"ts":"2026-11-22T05:05:26.123Z","level":"info","msg":"container started","container":"exec_42","pid":42}"#
        );
    }

    #[test]
    fn levels() {
        for (level, name) in [
            (log::Level::Error, "error"),
            (log::Level::Warn, "warn"),
            (log::Level::Info, "info"),
            (log::Level::Debug, "debug"),
            (log::Level::Trace, "trace"),
        ] {
            let line = format(
                LogFormat::Logfmt,
                level,
                "apptheus",
                format_args!("x"),
                &None::<(&str, i32)>,
            );
            assert_eq!(
                line,
                format!("ts=2026-11-22T05:05:26.123Z level={name} msg=x")
            );
        }
    }

    #[test]
    fn logfmt_quoting_and_escaping() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("", r#""""#),
            ("two words", r#""two words""#),
            ("a=b", r#""a=b""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            ("back\\slash", "back\\slash"),
            ("back\\slash \"q\"", r#""back\\slash \"q\"""#),
            ("line\nbreak", r#""line\nbreak""#),
            ("cr\rtab\t", r#""cr\rtab\t""#),
            ("bell\u{7}", r#""bell\u0007""#),
            ("sep\u{2028}", r#""sep\u2028""#),
            ("ünïcødé", "ünïcødé"),
        ];
        for (value, want) in cases {
            let kvs = [("k", *value)];
            let line = format(
                LogFormat::Logfmt,
                log::Level::Info,
                "apptheus",
                format_args!("m"),
                &kvs,
            );
            let rendered = line.strip_prefix("ts=2026-11-22T05:05:26.123Z level=info msg=m k=");
            assert_eq!(rendered, Some(*want), "{value:?}: {line}");
        }
        let line = format(
            LogFormat::Logfmt,
            log::Level::Warn,
            "apptheus",
            format_args!("cannot read \"{}\"", "/proc/1/stat"),
            &None::<(&str, i32)>,
        );
        assert!(
            line.ends_with(r#"msg="cannot read \"/proc/1/stat\"""#),
            "{line}"
        );
    }

    #[test]
    fn failing_display_does_not_panic() {
        struct Failing;
        impl fmt::Display for Failing {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("part")?;
                Err(fmt::Error)
            }
        }
        let kvs: &[(&str, kv::Value)] = &[("v", kv::Value::from_display(&Failing))];
        let line = format(
            LogFormat::Logfmt,
            log::Level::Info,
            "apptheus",
            format_args!("{}", Failing),
            &kvs,
        );
        assert_eq!(
            line,
            "ts=2026-11-22T05:05:26.123Z level=info msg=part v=part"
        );
    }

    #[test]
    fn logfmt_keys_cannot_break_pairs() {
        let kvs = [("a key=\"x\"", 1)];
        let line = format(
            LogFormat::Logfmt,
            log::Level::Info,
            "apptheus",
            format_args!("m"),
            &kvs,
        );
        assert!(line.ends_with(" a_key__x_=1"), "{line}");
    }

    #[test]
    fn key_value_types() {
        let error = std::io::Error::other("disk on fire");
        let kvs: &[(&str, kv::Value)] = &[
            ("u", kv::Value::from(7u64)),
            ("i", kv::Value::from(-3i32)),
            ("f", kv::Value::from(0.25f64)),
            ("nan", kv::Value::from(f64::NAN)),
            ("b", kv::Value::from(true)),
            ("c", kv::Value::from('x')),
            ("big", kv::Value::from(u128::MAX)),
            ("small128", kv::Value::from(-5i128)),
            ("s", kv::Value::from("text")),
            ("dbg", kv::Value::from_debug(&Some(1))),
            ("disp", kv::Value::from_display(&error)),
        ];
        let json = format(
            LogFormat::Json,
            log::Level::Info,
            "apptheus",
            format_args!("m"),
            &kvs,
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["u"], serde_json::json!(7));
        assert_eq!(parsed["i"], serde_json::json!(-3));
        assert_eq!(parsed["f"], serde_json::json!(0.25));
        assert_eq!(parsed["nan"], serde_json::json!("NaN"));
        assert_eq!(parsed["b"], serde_json::json!(true));
        assert_eq!(parsed["c"], serde_json::json!("x"));
        assert_eq!(parsed["big"], serde_json::json!(u128::MAX.to_string()));
        assert_eq!(parsed["small128"], serde_json::json!(-5));
        assert_eq!(parsed["s"], serde_json::json!("text"));
        assert_eq!(parsed["dbg"], serde_json::json!("Some(1)"));
        assert_eq!(parsed["disp"], serde_json::json!("disk on fire"));

        let logfmt = format(
            LogFormat::Logfmt,
            log::Level::Info,
            "apptheus",
            format_args!("m"),
            &kvs,
        );
        assert!(
            logfmt.ends_with(&format!(
                r#" u=7 i=-3 f=0.25 nan=NaN b=true c=x big={} small128=-5 s=text dbg=Some(1) disp="disk on fire""#,
                u128::MAX
            )),
            "{logfmt}"
        );
    }

    #[test]
    fn json_escapes_strings() {
        let kvs = [("path", "a\"b\\c\nd")];
        let json = format(
            LogFormat::Json,
            log::Level::Error,
            "apptheus",
            format_args!("bad \"{}\"", "x"),
            &kvs,
        );
        assert!(!json.contains('\n'));
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["msg"], "bad \"x\"");
        assert_eq!(parsed["path"], "a\"b\\c\nd");
        assert_eq!(parsed["level"], "error");
    }

    #[test]
    fn reserved_keys_are_renamed() {
        let kvs = [("msg", "mine"), ("level", "high")];
        let logfmt = format(
            LogFormat::Logfmt,
            log::Level::Info,
            "apptheus",
            format_args!("m"),
            &kvs,
        );
        assert!(
            logfmt.ends_with(" msg=m fields.msg=mine fields.level=high"),
            "{logfmt}"
        );
        let json = format(
            LogFormat::Json,
            log::Level::Info,
            "apptheus",
            format_args!("m"),
            &kvs,
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["msg"], "m");
        assert_eq!(parsed["level"], "info");
        assert_eq!(parsed["fields.msg"], "mine");
    }

    #[test]
    fn source_only_for_foreign_targets() {
        let none = &None::<(&str, i32)>;
        for own in ["apptheus", "apptheus::gateway", "apptheus::cgroup::v2"] {
            let line = format(
                LogFormat::Logfmt,
                log::Level::Info,
                own,
                format_args!("m"),
                none,
            );
            assert!(!line.contains("source="), "{own}: {line}");
        }
        for foreign in ["apptheus_ebpf", "apptheus_common::x", "aya::bpf", "hyper"] {
            let line = format(
                LogFormat::Logfmt,
                log::Level::Info,
                foreign,
                format_args!("m"),
                none,
            );
            assert!(
                line.ends_with(&format!(" msg=m source={foreign}")),
                "{foreign}: {line}"
            );
            let json = format(
                LogFormat::Json,
                log::Level::Info,
                foreign,
                format_args!("m"),
                none,
            );
            assert!(
                json.ends_with(&format!(r#","msg":"m","source":"{foreign}"}}"#)),
                "{json}"
            );
        }
        let kvs = [("pid", 1)];
        let line = format(
            LogFormat::Logfmt,
            log::Level::Info,
            "aya",
            format_args!("m"),
            &kvs,
        );
        assert!(line.ends_with(" msg=m source=aya pid=1"), "{line}");
    }

    /// Formats what the `log` macros hand it, with a fixed timestamp.
    struct CaptureLogger {
        format: LogFormat,
        lines: std::sync::Mutex<Vec<String>>,
    }

    impl log::Log for CaptureLogger {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }

        fn log(&self, record: &log::Record) {
            let line = format_record(
                self.format,
                UNIX_EPOCH,
                record.level(),
                record.target(),
                record.args(),
                record.key_values(),
            );
            self.lines.lock().unwrap().push(line);
        }

        fn flush(&self) {}
    }

    #[test]
    fn macro_key_values_reach_the_formatter() {
        // The macros check the global max level even with an explicit logger. Raising it is
        // harmless: no global logger is installed in the tests.
        log::set_max_level(log::LevelFilter::Trace);
        let id = String::from("exec_42");
        for (format, want) in [
            (
                LogFormat::Logfmt,
                r#"ts=1970-01-01T00:00:00.000Z level=info msg="container started" container=exec_42 pid=42 ok=true"#,
            ),
            (
                LogFormat::Json,
                r#"{"ts":"1970-01-01T00:00:00.000Z","level":"info","msg":"container started","container":"exec_42","pid":42,"ok":true}"#,
            ),
        ] {
            let logger = CaptureLogger {
                format,
                lines: Default::default(),
            };
            log::info!(logger: &logger, container = id.as_str(), pid = 42, ok = true; "container started");
            assert_eq!(*logger.lines.lock().unwrap(), [want]);
        }
    }

    #[test]
    fn logger_filters_by_level() {
        let logger = StderrLogger {
            format: LogFormat::Logfmt,
            filter: LogLevel::Warn.level_filter(),
        };
        let metadata = |level| {
            log::Metadata::builder()
                .level(level)
                .target("aya_log")
                .build()
        };
        assert!(logger.enabled(&metadata(log::Level::Error)));
        assert!(logger.enabled(&metadata(log::Level::Warn)));
        assert!(!logger.enabled(&metadata(log::Level::Info)));
        assert!(!logger.enabled(&metadata(log::Level::Debug)));
    }
}
