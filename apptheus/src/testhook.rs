//! Pauses the tests use to reach a race on purpose: with `APPTHEUS_TEST_<NAME>_DELAY_MS` set in
//! the daemon's environment, `pause` logs what it waits for (the tests wait for that line), then
//! sleeps. Unset (always, outside the tests), it does nothing.
use std::{collections::HashMap, sync::OnceLock, time::Duration};

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

impl Point {
    fn var(self) -> &'static str {
        match self {
            Point::Decision => "APPTHEUS_TEST_DECISION_DELAY_MS",
            Point::Move => "APPTHEUS_TEST_MOVE_DELAY_MS",
            Point::Hold => "APPTHEUS_TEST_HOLD_DELAY_MS",
        }
    }
}

fn delays() -> &'static HashMap<Point, Duration> {
    static DELAYS: OnceLock<HashMap<Point, Duration>> = OnceLock::new();
    DELAYS.get_or_init(|| {
        [Point::Decision, Point::Move, Point::Hold]
            .into_iter()
            .filter_map(|p| {
                let ms: u64 = std::env::var(p.var()).ok()?.parse().ok()?;
                Some((p, Duration::from_millis(ms)))
            })
            .collect()
    })
}

/// Pause at `point` if a test asked for it, saying which processes are at stake.
pub fn pause(point: Point, pids: &[i32]) {
    if let Some(d) = delays().get(&point) {
        tracing::info!(point = ?point, pids = ?pids, delay_ms = d.as_millis() as u64, "test hook: pausing");
        std::thread::sleep(*d);
        tracing::info!(point = ?point, pids = ?pids, "test hook: resumed");
    }
}
