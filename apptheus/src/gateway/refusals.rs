//! The log lines of refused connections, rate-limited: a flood of untrusted connections costs a
//! counter increment each (`apptheus_gateway_rejections_total`), not a line each in the journal.
//! The uid and exe path are shown as `--privacy.hash-salt-file` publishes them.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use crate::launcher::Rejection;
use crate::privacy::Privacy;

/// Lines per reason and window, at most.
const LINES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Refusals {
    /// Per reason: the window's start, lines written in it, refusals not written.
    windows: Mutex<HashMap<Rejection, (Instant, u32, u64)>>,
    privacy: Arc<Privacy>,
}

impl Refusals {
    pub fn new(privacy: Arc<Privacy>) -> Refusals {
        Refusals {
            windows: Mutex::default(),
            privacy,
        }
    }

    /// Log a refusal (unless too many of its reason were logged lately); returns `reason`.
    pub fn refuse(&self, reason: Rejection, pid: i32, uid: u32, exe: &str, why: &str) -> Rejection {
        let now = Instant::now();
        let (write, suppressed) = {
            let mut windows = self.windows.lock();
            let w = windows.entry(reason).or_insert((now, 0, 0));
            let mut suppressed = 0;
            if now.duration_since(w.0) >= WINDOW {
                suppressed = w.2;
                *w = (now, 0, 0);
            }
            let write = w.1 < LINES;
            if write {
                w.1 += 1;
            } else {
                w.2 += 1;
            }
            (write, suppressed)
        };
        if suppressed > 0 {
            tracing::warn!(
                reason = reason.as_str(),
                count = suppressed,
                "more launcher connections were refused than logged"
            );
        }
        if write {
            let p = &self.privacy;
            tracing::warn!(
                reason = reason.as_str(),
                pid,
                uid = p.uid(uid).as_str(),
                exe = p.path(exe, Some(uid)).as_str(),
                // Best effort: an error's text may name a user's cgroup (user-1000.slice).
                why = p.cgroup(why).as_str(),
                "launcher connection refused"
            );
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_per_reason_and_window() {
        let r = Refusals::default();
        for _ in 0..100 {
            r.refuse(Rejection::Untrusted, 1, 1, "/x", "");
        }
        r.refuse(Rejection::Limit, 1, 1, "/x", "");
        let w = r.windows.lock();
        assert_eq!(w[&Rejection::Untrusted].1, LINES);
        assert_eq!(w[&Rejection::Untrusted].2, 100 - u64::from(LINES));
        assert_eq!(w[&Rejection::Limit].1, 1);
    }
}
