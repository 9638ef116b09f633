//! The last minutes of every container's CPU and memory, for `/containers` and
//! `/api/containers`: a fixed number of points per container, kept by the sampler, in memory
//! only (Prometheus keeps the long history; this is the node's own glance at "right now").
//!
//! A point closes every `PASSES_PER_POINT` sampling intervals (5 s at the default 0.5 s), on
//! wall-clock boundaries (multiples of the step since the epoch), so every container's points
//! line up and a chart needs only the time of the newest one. A point holds the CPU cores used
//! on average since the point before (from the CPU time read by the pass that closes it, over
//! the monotonic time between the passes), and the memory usage at its close. A pass that comes
//! late (a stalled sampler) closes every boundary it crossed with the same average. A container
//! keeps at most `POINTS` points: the oldest go first. Besides the points, each container has
//! its CPU cores "now", over the last second or so.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use foldhash::HashMap;
use parking_lot::{Mutex, MutexGuard};

use crate::container::Identity;

/// Points kept per container.
pub const POINTS: usize = 120;
/// Sampling passes per point: a point every 10 intervals (5 s at the default 0.5 s, so the 120
/// points cover 10 minutes).
pub const PASSES_PER_POINT: u32 = 10;
/// The CPU cores "now" are averaged over at least this long (a pass the sampler runs at once
/// for an admission is milliseconds after the one before: too short a window to mean much).
const NOW_WINDOW: Duration = Duration::from_secs(1);

/// One point: CPU in cores, memory in bytes; NaN where the value could not be read. `f32`
/// keeps a point at 8 bytes: charts need no more than 7 significant digits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub cpu_cores: f32,
    pub memory_bytes: f32,
}

/// What a pass read of one container.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// When the pass read it (monotonic: the CPU averages).
    pub at: Instant,
    /// The same moment as Unix seconds (wall clock: the points' boundaries).
    pub unix: f64,
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// One container's points.
#[derive(Debug)]
pub struct Track {
    /// Its start time: an id used again (a recycled pid) starts a new track.
    start_time: f64,
    points: VecDeque<Point>,
    /// The boundary (in steps since the epoch) the newest point closed at; the one the first
    /// reading fell in before there is a point.
    slot: Option<u64>,
    /// Where the point being built started: when, and the CPU time then.
    since: Option<(Instant, f64)>,
    /// Where the "now" average started.
    now_since: Option<(Instant, f64)>,
    cpu_cores_now: Option<f32>,
}

impl Track {
    fn new(start_time: f64) -> Track {
        Track {
            start_time,
            points: VecDeque::with_capacity(POINTS),
            slot: None,
            since: None,
            now_since: None,
            cpu_cores_now: None,
        }
    }

    /// The points, oldest first.
    pub fn points(&self) -> impl ExactSizeIterator<Item = &Point> {
        self.points.iter()
    }

    /// Unix seconds of the boundary the newest point closed at; `None` before the first point.
    pub fn last(&self, step: Duration) -> Option<f64> {
        (!self.points.is_empty())
            .then_some(self.slot)
            .flatten()
            .map(|s| s as f64 * step.as_secs_f64())
    }

    /// CPU cores used over the last second or so; `None` until two readings a second apart.
    pub fn cpu_cores_now(&self) -> Option<f32> {
        self.cpu_cores_now
    }

    fn record(&mut self, r: &Reading, step: Duration) {
        let cpu = r.cpu_seconds.unwrap_or(f64::NAN);
        if let Some((t, c)) = self.now_since {
            let dt = r.at.saturating_duration_since(t);
            if dt >= NOW_WINDOW {
                self.cpu_cores_now = rate(cpu - c, dt);
                self.now_since = Some((r.at, cpu));
            }
        } else {
            self.now_since = Some((r.at, cpu));
        }

        let slot = (r.unix / step.as_secs_f64()).floor() as u64;
        let (Some(last), Some((t, c))) = (self.slot, self.since) else {
            self.slot = Some(slot);
            self.since = Some((r.at, cpu));
            return;
        };
        if slot < last {
            // The wall clock went back: the points' times no longer hold. Start again.
            self.points.clear();
            self.slot = Some(slot);
            self.since = Some((r.at, cpu));
            return;
        }
        let crossed = usize::try_from(slot - last)
            .unwrap_or(usize::MAX)
            .min(POINTS);
        if crossed == 0 {
            return;
        }
        let point = Point {
            cpu_cores: rate(cpu - c, r.at.saturating_duration_since(t)).unwrap_or(f32::NAN),
            memory_bytes: r.memory_bytes.map_or(f32::NAN, |m| m as f32),
        };
        for _ in 0..crossed {
            if self.points.len() == POINTS {
                self.points.pop_front();
            }
            self.points.push_back(point);
        }
        self.slot = Some(slot);
        self.since = Some((r.at, cpu));
    }
}

/// CPU seconds over `dt` as cores; `None` for an unknown or impossible value (a counter that
/// went back: the cgroup was made anew).
fn rate(cpu_seconds: f64, dt: Duration) -> Option<f32> {
    let secs = dt.as_secs_f64();
    (cpu_seconds.is_finite() && cpu_seconds >= 0.0 && secs > 0.0)
        .then(|| (cpu_seconds / secs) as f32)
}

/// Every container's track.
pub struct History {
    interval: Duration,
    step: Duration,
    tracks: Mutex<Tracked>,
}

/// The tracks by the sampler's key for each container, and each id's key.
///
/// A pass records every container: looked up by a number, no string is hashed, followed and
/// compared (by id, that lookup was a fifth of an idle pass at 1,000 containers: cache
/// misses). Only the page looks up by id.
#[derive(Default)]
struct Tracked {
    by_key: HashMap<u64, Track>,
    keys: HashMap<String, u64>,
}

impl History {
    /// The history of a sampler that runs every `interval`.
    pub fn new(interval: Duration) -> History {
        History {
            interval,
            step: interval.saturating_mul(PASSES_PER_POINT),
            tracks: Mutex::new(Tracked::default()),
        }
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Time between two points.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Add what a pass read of `identity`'s container, which the sampler knows as `key`.
    pub fn record(&self, key: u64, identity: &Identity, reading: &Reading) {
        let mut tracked = self.lock();
        match tracked.by_key.get_mut(&key) {
            Some(track) if track.start_time == identity.start_time => {
                track.record(reading, self.step);
            }
            _ => {
                let mut track = Track::new(identity.start_time);
                track.record(reading, self.step);
                tracked.by_key.insert(key, track);
                tracked.keys.insert(identity.id.clone(), key);
            }
        }
    }

    /// Forget the containers whose keys `keep` says no to.
    pub fn retain(&self, keep: impl Fn(u64) -> bool) {
        let Tracked { by_key, keys } = &mut *self.lock();
        by_key.retain(|key, _| keep(*key));
        keys.retain(|_, key| by_key.contains_key(key));
    }

    /// Look at the tracks (the sampler waits meanwhile: be quick).
    pub fn read<R>(&self, f: impl FnOnce(&Tracks<'_>) -> R) -> R {
        let tracks = self.lock();
        f(&Tracks {
            tracks: &tracks,
            step: self.step,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tracked> {
        // Each change is one call on the map or one track's record: what a panic while
        // holding it left is consistent (parking_lot's locks are not poisoned).
        self.tracks.lock()
    }
}

/// The tracks, while `History::read` holds them.
pub struct Tracks<'a> {
    tracks: &'a Tracked,
    pub step: Duration,
}

impl Tracks<'_> {
    /// The track of the container `identity` names (the same id and start time).
    pub fn get(&self, identity: &Identity) -> Option<&Track> {
        let key = self.tracks.keys.get(&identity.id)?;
        self.tracks
            .by_key
            .get(key)
            .filter(|t| t.start_time == identity.start_time)
    }

    pub fn len(&self) -> usize {
        self.tracks.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(id: &str, start_time: f64) -> Identity {
        Identity {
            start_time,
            ..Identity::pending(id.into(), "0".into())
        }
    }

    /// A reading `secs` after `t0` (the wall clock at 1000 s then), with `cpu` seconds used.
    fn at(t0: Instant, secs: f64, cpu: f64, mem: u64) -> Reading {
        Reading {
            at: t0 + Duration::from_secs_f64(secs),
            unix: 1000.0 + secs,
            cpu_seconds: Some(cpu),
            memory_bytes: Some(mem),
        }
    }

    #[test]
    fn a_point_per_step_on_wall_clock_boundaries() {
        let h = History::new(Duration::from_millis(500));
        assert_eq!(h.step(), Duration::from_secs(5));
        let (c, t0) = (identity("c_1", 1.0), Instant::now());
        // 1000.0 .. 1004.5: the first step, no point closed yet.
        for i in 0..10 {
            let s = f64::from(i) * 0.5;
            h.record(1, &c, &at(t0, s, s * 2.0, 100));
        }
        h.read(|t| {
            let track = t.get(&c).unwrap();
            assert_eq!(track.points().len(), 0);
            assert_eq!(track.last(t.step), None);
            // Two cores over the last second.
            assert_eq!(track.cpu_cores_now(), Some(2.0));
        });
        // 1005.0 crosses the boundary: a point of two cores, the memory then.
        h.record(1, &c, &at(t0, 5.0, 10.0, 200));
        h.read(|t| {
            let track = t.get(&c).unwrap();
            let points: Vec<_> = track.points().copied().collect();
            assert_eq!(
                points,
                [Point {
                    cpu_cores: 2.0,
                    memory_bytes: 200.0
                }]
            );
            assert_eq!(track.last(t.step), Some(1005.0));
        });
        // Idle for a step, then a late pass 12 s on: two boundaries crossed at once, each with
        // the average since the last point.
        h.record(1, &c, &at(t0, 17.0, 16.0, 300));
        h.read(|t| {
            let track = t.get(&c).unwrap();
            let cores: Vec<f32> = track.points().map(|p| p.cpu_cores).collect();
            assert_eq!(cores, [2.0, 0.5, 0.5]);
            assert_eq!(track.last(t.step), Some(1015.0));
        });
    }

    #[test]
    fn bounded_to_the_newest_points() {
        let h = History::new(Duration::from_secs(1));
        let (c, t0) = (identity("c_1", 1.0), Instant::now());
        for i in 0..(POINTS as u32 + 30) {
            let s = f64::from(i) * 10.0;
            h.record(1, &c, &at(t0, s, f64::from(i), u64::from(i)));
        }
        h.read(|t| {
            let track = t.get(&c).unwrap();
            assert_eq!(track.points().len(), POINTS);
            // The newest point is the last reading's memory; the oldest ones went.
            let mem: Vec<f32> = track.points().map(|p| p.memory_bytes).collect();
            assert_eq!(mem[POINTS - 1], (POINTS + 29) as f32);
            assert_eq!(mem[0], 30.0);
            assert!(
                track.points.capacity() < POINTS * 2,
                "no growth past the bound"
            );
        });
        // A stall longer than the whole history still adds at most POINTS points.
        h.record(1, &c, &at(t0, 1e6, 1e6, 0));
        h.read(|t| assert_eq!(t.get(&c).unwrap().points().len(), POINTS));
    }

    #[test]
    fn unknown_values_and_a_counter_that_went_back_are_nan() {
        let h = History::new(Duration::from_millis(100));
        let (c, t0) = (identity("c_1", 1.0), Instant::now());
        h.record(1, &c, &at(t0, 0.0, 50.0, 1));
        let mut r = at(t0, 1.0, 10.0, 1);
        r.memory_bytes = None;
        h.record(1, &c, &r);
        h.read(|t| {
            let track = t.get(&c).unwrap();
            let p = track.points().next().copied().unwrap();
            assert!(p.cpu_cores.is_nan() && p.memory_bytes.is_nan());
            assert_eq!(track.cpu_cores_now(), None);
        });
    }

    #[test]
    fn a_recycled_id_starts_anew_and_forgotten_ids_go() {
        let h = History::new(Duration::from_millis(100));
        let t0 = Instant::now();
        let (old, new) = (identity("c_1", 1.0), identity("c_1", 2.0));
        h.record(1, &old, &at(t0, 0.0, 0.0, 1));
        h.record(1, &old, &at(t0, 2.0, 1.0, 1));
        h.read(|t| {
            assert!(t.get(&old).is_some_and(|t| t.points().len() > 0));
            assert!(t.get(&new).is_none(), "another container's points");
        });
        h.record(2, &new, &at(t0, 3.0, 0.0, 1));
        h.read(|t| {
            assert!(t.get(&old).is_none());
            assert_eq!(t.get(&new).unwrap().points().len(), 0);
        });
        h.record(3, &identity("c_2", 1.0), &at(t0, 3.0, 0.0, 1));
        h.retain(|key| key == 3);
        h.read(|t| assert_eq!(t.len(), 1));
    }

    #[test]
    fn the_clock_going_back_starts_the_points_again() {
        let h = History::new(Duration::from_millis(100));
        let (c, t0) = (identity("c_1", 1.0), Instant::now());
        h.record(1, &c, &at(t0, 0.0, 0.0, 1));
        h.record(1, &c, &at(t0, 2.0, 1.0, 1));
        assert_eq!(h.read(|t| t.get(&c).unwrap().points().len()), 2);
        let mut back = at(t0, 2.5, 1.0, 1);
        back.unix = 900.0;
        h.record(1, &c, &back);
        h.read(|t| assert_eq!(t.get(&c).unwrap().points().len(), 0));
        back.at += Duration::from_secs(1);
        back.unix += 1.0;
        h.record(1, &c, &back);
        h.read(|t| {
            let track = t.get(&c).unwrap();
            assert_eq!(track.points().len(), 1);
            assert_eq!(track.last(t.step), Some(901.0));
        });
    }
}
