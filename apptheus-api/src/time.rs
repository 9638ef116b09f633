//! Unix seconds, as every record and answer holds times.
use std::time::SystemTime;

/// `t` as Unix seconds (0 before the epoch).
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The inverse of `unix_seconds`; a value no `SystemTime` can hold gives `None`.
pub fn from_unix_seconds(secs: f64) -> Option<SystemTime> {
    let since = std::time::Duration::try_from_secs_f64(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = from_unix_seconds(1_700_000_000.25).unwrap();
        assert_eq!(unix_seconds(t), 1_700_000_000.25);
        assert_eq!(from_unix_seconds(f64::MAX), None);
        assert_eq!(from_unix_seconds(-1.0), None);
        assert_eq!(from_unix_seconds(f64::NAN), None);
    }
}
