//! Counting tests: libtest's `test result:` lines summed into one "N passed, M failed".
use std::ops::AddAssign;

/// Tests passed and failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    /// The counts of one `test result:` line, without its prefix ("ok. 12 passed; 0 failed;
    /// ...").
    pub fn of_result(line: &str) -> Tally {
        Tally {
            passed: count_of(line, "passed"),
            failed: count_of(line, "failed"),
        }
    }
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// The number before `what` in a `test result:` line.
fn count_of(line: &str, what: &str) -> u64 {
    line.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what)
                .map(str::trim)
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `1 min 5 s`, `42.0 s`: a duration for the summary lines.
pub fn minutes(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {:02.0} s", (s / 60.0) as u64, s % 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_result_line() {
        let t = Tally::of_result(
            "FAILED. 10 passed; 4 failed; 0 ignored; 0 measured; 0 filtered out; finished in 84.43s",
        );
        assert_eq!(
            t,
            Tally {
                passed: 10,
                failed: 4
            }
        );
        let mut sum = Tally::of_result("ok. 5 passed; 0 failed; 0 ignored");
        sum += t;
        assert_eq!(sum.to_string(), "15 passed, 4 failed");
        assert_eq!(minutes(std::time::Duration::from_secs(65)), "1 min 05 s");
        assert_eq!(minutes(std::time::Duration::from_millis(4200)), "4.2 s");
    }
}
