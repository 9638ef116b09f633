//! Durations in the Prometheus/Go syntax, as the flags (`--monitor.interval`,
//! `--container.retention`) and the web configuration (`rate_limit.interval`) take them.
//!
//! Hand-written because no crate parses this union: Go's `time.ParseDuration` has fractions
//! (`0.5s`, `1.5h`) and `ns`/`us`/`µs`, Prometheus's `model.ParseDuration` has `d`, `w` and `y`;
//! `humantime` and `go-parse-duration` take one side or the other, with other spellings besides.
use std::time::Duration;

const SYNTAX: &str =
    "expected numbers with units (ms, s, m, h, d, w, y), e.g. 500ms, 0.5s, 2m, 1h30m";

/// Why a duration did not parse; the messages name what was wrong and give the syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration: {syntax}", syntax = SYNTAX)]
    Empty,
    #[error("a duration cannot be negative")]
    Negative,
    #[error("expected a number at {0:?}: {syntax}", syntax = SYNTAX)]
    ExpectedNumber(String),
    #[error("missing unit after {0:?}: {syntax}", syntax = SYNTAX)]
    MissingUnit(String),
    #[error("unknown unit {0:?}: {syntax}", syntax = SYNTAX)]
    UnknownUnit(String),
    #[error("duration too large (the limit is about 584 years)")]
    TooLarge,
}

/// Parses a sequence of `<number><unit>`, e.g. `500ms`, `0.5s`, `1h30m`, `1.5h`. Units: `ns`,
/// `us` (or `µs`), `ms`, `s`, `m`, `h`, `d`, `w`, `y` (365 days). Numbers may have a fraction;
/// what falls below a nanosecond is truncated. A lone `0` is zero; any other number needs a
/// unit. No sign is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let (number, after_number) = split_number(rest)?;
        let (unit, after_unit) = split_unit(after_number);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(number.to_string()));
        }
        let unit_nanos =
            unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit(unit.to_string()))?;
        let term = number_times_unit(number, unit_nanos).ok_or(DurationError::TooLarge)?;
        total_nanos = total_nanos
            .checked_add(term)
            .ok_or(DurationError::TooLarge)?;
        rest = after_unit;
    }
    // Keeping every duration within u64 nanoseconds (584 years) lets the rest of the daemon
    // convert to nanoseconds without overflow checks.
    let nanos = u64::try_from(total_nanos).map_err(|_| DurationError::TooLarge)?;
    Ok(Duration::from_nanos(nanos))
}

/// Splits `<digits>[.<digits>]` off the front of `s`; at least one digit is needed.
fn split_number(s: &str) -> Result<(&str, &str), DurationError> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let number = &s[..end];
    let well_formed = number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if !well_formed {
        let found = if number.is_empty() { s } else { number };
        return Err(DurationError::ExpectedNumber(found.to_string()));
    }
    Ok((number, &s[end..]))
}

/// Splits the unit (everything up to the next number) off the front of `s`.
fn split_unit(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| c.is_ascii_digit() || c == '.')
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn unit_nanos(unit: &str) -> Option<u128> {
    const SECOND: u128 = 1_000_000_000;
    const DAY: u128 = 24 * 60 * 60 * SECOND;
    let nanos = match unit {
        "ns" => 1,
        // Go accepts both the micro sign (U+00B5) and the Greek mu (U+03BC).
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => SECOND,
        "m" => 60 * SECOND,
        "h" => 60 * 60 * SECOND,
        "d" => DAY,
        "w" => 7 * DAY,
        "y" => 365 * DAY,
        _ => return None,
    };
    Some(nanos)
}

/// `number` (digits with at most one '.') times `unit_nanos`, exactly, truncated to whole
/// nanoseconds. None on overflow.
fn number_times_unit(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let mut nanos: u128 = 0;
    for digit in whole.bytes() {
        nanos = nanos
            .checked_mul(10)?
            .checked_add(u128::from(digit - b'0'))?;
    }
    nanos = nanos.checked_mul(unit_nanos)?;
    // Fraction digits past the 18th are worth less than a nanosecond even for a year (3.2e16
    // ns); dropping them keeps 10^digits and the product within u128.
    let fraction = &fraction[..fraction.len().min(18)];
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for digit in fraction.bytes() {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    nanos.checked_add(numerator * unit_nanos / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let good: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", ms(500)),
            ("0.5s", ms(500)),
            (".5s", ms(500)),
            ("90s", s(90)),
            ("2m", s(120)),
            ("1h", s(3600)),
            ("1h30m", s(5400)),
            ("1.5h", s(5400)),
            ("1d", s(86_400)),
            ("1w", s(7 * 86_400)),
            ("1y", s(365 * 86_400)),
            (
                "1y2w3d4h5m6s7ms",
                ms(((((365 + 14 + 3) * 24 + 4) * 60 + 5) * 60 + 6) * 1000 + 7),
            ),
            ("1s1h", s(3601)),
            ("100us", Duration::from_micros(100)),
            ("100\u{b5}s", Duration::from_micros(100)),
            ("100\u{3bc}s", Duration::from_micros(100)),
            ("42ns", Duration::from_nanos(42)),
            ("1.0000000001s", Duration::from_nanos(1_000_000_000)),
            (
                "0.333333333333333333333333s",
                Duration::from_nanos(333_333_333),
            ),
            ("500y", s(500 * 365 * 86_400)),
        ];
        for (input, want) in good {
            assert_eq!(parse_duration(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        let bad: &[(&str, DurationError, &str)] = &[
            ("", DurationError::Empty, "empty"),
            ("5", DurationError::MissingUnit("5".into()), "missing unit"),
            (
                "1h30",
                DurationError::MissingUnit("30".into()),
                "missing unit",
            ),
            ("-1s", DurationError::Negative, "negative"),
            (
                "+1s",
                DurationError::ExpectedNumber("+1s".into()),
                "expected a number",
            ),
            (
                "abc",
                DurationError::ExpectedNumber("abc".into()),
                "expected a number",
            ),
            (
                "s",
                DurationError::ExpectedNumber("s".into()),
                "expected a number",
            ),
            (
                "1.2.3s",
                DurationError::ExpectedNumber("1.2.3".into()),
                "expected a number",
            ),
            (
                ".s",
                DurationError::ExpectedNumber(".".into()),
                "expected a number",
            ),
            ("5x", DurationError::UnknownUnit("x".into()), "unknown unit"),
            (
                "5 s",
                DurationError::UnknownUnit(" s".into()),
                "unknown unit",
            ),
            (
                "5sec",
                DurationError::UnknownUnit("sec".into()),
                "unknown unit",
            ),
            ("1000y", DurationError::TooLarge, "too large"),
            (
                "99999999999999999999999999999999999999999h",
                DurationError::TooLarge,
                "too large",
            ),
        ];
        for (input, kind, words) in bad {
            let err = parse_duration(input).expect_err(input);
            assert_eq!(&err, kind, "{input}");
            let message = err.to_string();
            assert!(
                message.contains(words),
                "{input}: {message:?} lacks {words:?}"
            );
        }
        // The syntax hint comes with every error about the input's form.
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .to_string()
                .contains("1h30m")
        );
    }
}
