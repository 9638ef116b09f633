//! Numbers as people read them, the same on the page (`page.js` spells these rules again, for
//! its refreshes) and in `apptheus-top`.

/// A missing value.
pub const NONE: &str = "—";

/// CPU in cores, two decimals: `1.98`.
pub fn cores(c: f64) -> String {
    format!("{c:.2}")
}

/// Bytes in binary units, three significant digits at most: `512 B`, `1.5 KiB`, `12.3 MiB`,
/// `123 GiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{b} B"),
        // 1023.95 KiB would print as "1024.0 KiB"; it is close enough to 1 MiB to say so.
        _ if v >= 999.5 && unit + 1 < UNITS.len() => format!("1.0 {}", UNITS[unit + 1]),
        _ if v >= 99.95 => format!("{v:.0} {}", UNITS[unit]),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// A span of time, two units at most: `45s`, `12m05s`, `3h04m`, `2d03h`.
pub fn duration(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// CPU time: tenths of a second below a minute (`12.3s`), else as `duration`.
pub fn cpu_time(secs: f64) -> String {
    if secs < 60.0 {
        format!("{:.1}s", secs.max(0.0))
    } else {
        duration(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(cores(1.984), "1.98");
        assert_eq!(cores(0.0), "0.00");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12_900_000), "12.3 MiB");
        assert_eq!(bytes(123 << 30), "123 GiB");
        assert_eq!(bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
        assert_eq!(duration(45.9), "45s");
        assert_eq!(duration(725.0), "12m05s");
        assert_eq!(duration(3.0 * 3600.0 + 4.0 * 60.0), "3h04m");
        assert_eq!(duration(2.0 * 86400.0 + 3.0 * 3600.0 + 59.0), "2d03h");
        assert_eq!(duration(-5.0), "0s");
        assert_eq!(duration(f64::NAN), "0s");
        assert_eq!(cpu_time(12.34), "12.3s");
        assert_eq!(cpu_time(61.0), "1m01s");
    }
}
