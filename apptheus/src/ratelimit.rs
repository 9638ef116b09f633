//! One token bucket (Go's `rate.Limiter`) for the two rate limits: the HTTP rate limit per
//! client (`http::guard`), which answers a request at once or not at all (`try_take`), and the
//! admissions per user (`registry`), whose launchers wait their turn (`reserve`). A leaf: it
//! imports nothing of the crate.
use std::time::{Duration, Instant};

/// A bucket of at most `burst` tokens, refilled continuously at `per_second` tokens a second.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    /// Below zero: tokens `reserve` promised to callers that wait for them.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, one more every `interval` (the HTTP rate limit's terms;
    /// the web config refuses a zero interval).
    pub fn every(interval: Duration, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket::per_second(1.0 / interval.as_secs_f64(), burst, now)
    }

    /// A full bucket of `burst` tokens, `per_second` more a second (the admissions' terms).
    pub fn per_second(per_second: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst);
        TokenBucket {
            per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// The tokens at `now`: what came in since the last look, never beyond the burst however
    /// long the pause. A `now` before the last look (taken by another thread before it got the
    /// lock) adds nothing.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
    }

    /// How long until the bucket holds one whole token (zero if it does).
    fn until_one(&self) -> Duration {
        Duration::try_from_secs_f64(((1.0 - self.tokens) / self.per_second).max(0.0))
            .unwrap_or(Duration::MAX)
    }

    /// Take a token if there is one now (Go's `Allow`); else how long until there is, and
    /// nothing is taken.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.until_one())
        }
    }

    /// Take the next token, there now or promised (Go's `Reserve`): how long the caller waits
    /// for it (zero while the burst lasts; past it, one interval after the one promised before,
    /// in order of arrival). None if that is longer than `max_wait`: nothing is taken then.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Option<Duration> {
        self.refill(now);
        let wait = self.until_one();
        if wait > max_wait {
            return None;
        }
        self.tokens -= 1.0;
        Some(wait)
    }

    /// Give back a token that was taken and not used (never beyond the burst).
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// Whether the bucket is full at `now`: it then says nothing a new one would not, and may
    /// be dropped.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.tokens + elapsed.as_secs_f64() * self.per_second >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn try_take_refills_at_the_interval_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::every(Duration::from_secs(1), 2, t0);
        assert_eq!((b.try_take(t0), b.try_take(t0)), (Ok(()), Ok(())));
        assert_eq!(b.try_take(t0), Err(Duration::from_secs(1)));
        // Refused tries take nothing: half a token at 500 ms, the whole one at 1 s.
        assert_eq!(b.try_take(t0 + 500 * MS), Err(500 * MS));
        assert_eq!(b.try_take(t0 + 1000 * MS), Ok(()));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_take(later).is_ok() && b.try_take(later).is_ok());
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn a_burst_of_zero_never_gives_a_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::every(Duration::from_secs(1), 0, t0);
        assert!(b.try_take(t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn reserve_queues_callers_one_interval_apart_up_to_the_longest_wait() {
        let t0 = Instant::now();
        let max_wait = Duration::from_secs(1);
        // 4 a second, bursts of 2.
        let mut b = TokenBucket::per_second(4.0, 2, t0);
        let turns: Vec<_> = (0..7).map(|_| b.reserve(t0, max_wait)).collect();
        assert_eq!(
            turns,
            [
                Some(Duration::ZERO),
                Some(Duration::ZERO),
                Some(250 * MS),
                Some(500 * MS),
                Some(750 * MS),
                Some(1000 * MS),
                // Past the longest wait: refused, and nothing taken.
                None,
            ]
        );
        assert_eq!(b.reserve(t0, Duration::from_secs(2)), Some(1250 * MS));
        // Time pays the promised turns back first.
        assert_eq!(b.reserve(t0 + 1000 * MS, max_wait), Some(500 * MS));
        assert!(b.try_take(t0 + 1000 * MS).is_err());
    }

    #[test]
    fn a_token_given_back_is_the_next_taken_and_the_burst_still_caps() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(1.0, 1, t0);
        assert_eq!(b.reserve(t0, Duration::from_secs(5)), Some(Duration::ZERO));
        assert_eq!(b.reserve(t0, Duration::from_secs(5)), Some(1000 * MS));
        b.give_back();
        assert_eq!(b.reserve(t0, Duration::from_secs(5)), Some(1000 * MS));
        b.give_back();
        b.give_back();
        b.give_back();
        assert!(b.is_full(t0));
        assert_eq!(b.try_take(t0), Ok(()));
        assert!(b.try_take(t0).is_err());
    }

    #[test]
    fn a_bucket_is_full_again_once_its_tokens_came_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(2.0, 3, t0);
        assert!(b.is_full(t0));
        assert!(b.reserve(t0, Duration::ZERO).is_some());
        assert!(!b.is_full(t0 + 499 * MS));
        assert!(b.is_full(t0 + 500 * MS));
    }

    #[test]
    fn a_rate_too_slow_to_wait_for_refuses_rather_than_overflows() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_second(1e-300, 1, t0);
        assert_eq!(b.reserve(t0, Duration::MAX), Some(Duration::ZERO));
        assert_eq!(b.reserve(t0, Duration::from_secs(1 << 40)), None);
        assert_eq!(b.try_take(t0), Err(Duration::MAX));
    }
}
