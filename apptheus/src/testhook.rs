//! Pauses and timeouts the tests use to reach a race on purpose, set by environment variables
//! (`APPTHEUS_TEST_*`) in the daemon's environment.
//!
//! Real only with the `test-hooks` cargo feature, which `cargo xtask test` turns on: without it
//! (any release build, every package) each hook is an empty function, so the shipped daemon
//! reads no such variable and holds not even their names (`cargo xtask package` checks).

/// The points the tests can pause at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Point {
    /// Between the exe check and the final liveness check of a peer (`DECISION`).
    Decision,
    /// After processes were tracked and before they are moved into their cgroup (`MOVE`).
    Move,
    /// At a restart, between listing a container's processes and holding them (`HOLD`).
    Hold,
}

#[cfg(feature = "test-hooks")]
pub use on::{admit_by_listing, counted_listing, http_timeout, pause, proc_listings};

#[cfg(not(feature = "test-hooks"))]
pub use off::{admit_by_listing, counted_listing, http_timeout, pause};

#[cfg(feature = "test-hooks")]
mod on {
    use std::{cell::Cell, collections::HashMap, sync::OnceLock, time::Duration};

    use super::Point;

    impl Point {
        fn var(self) -> &'static str {
            match self {
                Point::Decision => "APPTHEUS_TEST_DECISION_DELAY_MS",
                Point::Move => "APPTHEUS_TEST_MOVE_DELAY_MS",
                Point::Hold => "APPTHEUS_TEST_HOLD_DELAY_MS",
            }
        }
    }

    fn millis(var: &str) -> Option<Duration> {
        let ms: u64 = std::env::var(var).ok()?.parse().ok()?;
        Some(Duration::from_millis(ms))
    }

    fn delays() -> &'static HashMap<Point, Duration> {
        static DELAYS: OnceLock<HashMap<Point, Duration>> = OnceLock::new();
        DELAYS.get_or_init(|| {
            [Point::Decision, Point::Move, Point::Hold]
                .into_iter()
                .filter_map(|p| Some((p, millis(p.var())?)))
                .collect()
        })
    }

    /// Pause at `point` if a test asked for it, saying which processes are at stake (the tests
    /// wait for the first line).
    pub fn pause(point: Point, pids: &[i32]) {
        if let Some(d) = delays().get(&point) {
            tracing::info!(point = ?point, pids = ?pids, delay_ms = d.as_millis() as u64, "test hook: pausing");
            std::thread::sleep(*d);
            tracing::info!(point = ?point, pids = ?pids, "test hook: resumed");
        }
    }

    /// `APPTHEUS_TEST_HTTP_TIMEOUT_MS`: shorter header read and TLS handshake timeouts, so a
    /// test of slow clients does not wait the full 10 s.
    pub fn http_timeout() -> Option<Duration> {
        millis("APPTHEUS_TEST_HTTP_TIMEOUT_MS")
    }

    /// `APPTHEUS_TEST_ADMIT_BY_LISTING=1`: admissions list /proc even where the kernel has
    /// children files (to measure the one against the other).
    pub fn admit_by_listing() -> bool {
        std::env::var("APPTHEUS_TEST_ADMIT_BY_LISTING").is_ok_and(|v| v == "1")
    }

    thread_local! {
        /// Per thread: a registration lists on its caller's thread, and other tests'
        /// registrations run on others.
        static LISTINGS: Cell<u64> = const { Cell::new(0) };
    }

    /// A listing of /proc for the tracker's parent links began.
    pub fn counted_listing() {
        LISTINGS.with(|n| n.set(n.get() + 1));
    }

    /// Listings of /proc for the tracker's parent links on this thread so far (the tests:
    /// which way admissions go).
    pub fn proc_listings() -> u64 {
        LISTINGS.with(Cell::get)
    }
}

#[cfg(not(feature = "test-hooks"))]
mod off {
    use std::time::Duration;

    use super::Point;

    /// No pause outside the tests.
    #[inline(always)]
    pub fn pause(_point: Point, _pids: &[i32]) {}

    /// The daemon's own timeouts outside the tests.
    #[inline(always)]
    pub fn http_timeout() -> Option<Duration> {
        None
    }

    /// Admissions read children files wherever the kernel has them.
    #[inline(always)]
    pub fn admit_by_listing() -> bool {
        false
    }

    /// Listings are not counted outside the tests.
    #[inline(always)]
    pub fn counted_listing() {}
}
