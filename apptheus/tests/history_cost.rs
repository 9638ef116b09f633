//! What the containers' history costs in resident memory: 1,000 containers with full
//! histories, in a process of their own (this test binary holds this one test, so nothing
//! else allocates meanwhile). docs/glance.md, "What it costs", quotes the number it prints.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use apptheus::{
    container::Identity,
    history::{History, POINTS, Reading},
};

/// Resident bytes of this process.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

#[test]
fn a_thousand_full_histories_cost_about_a_kibibyte_each() {
    const CONTAINERS: usize = 1000;
    // The identities are the registry's, not the history's: made before the first reading.
    let identities: Vec<Identity> = (0..CONTAINERS)
        .map(|i| Identity {
            start_time: 1.0,
            ..Identity::pending(format!("apptheus-exec_{}", 100_000 + i), "1000".into())
        })
        .collect();
    let history = History::new(Duration::from_millis(500));
    let step = history.step().as_secs_f64();
    let t0 = Instant::now();
    let before = rss();
    // A reading per step, a few more than fill every history.
    for s in 0..(POINTS + 5) {
        let secs = s as f64 * step;
        for (i, identity) in identities.iter().enumerate() {
            let reading = Reading {
                at: t0 + Duration::from_secs_f64(secs),
                unix: 1_000_000.0 + secs,
                cpu_seconds: Some(secs * (i % 4) as f64),
                memory_bytes: Some(1 << 30),
            };
            history.record(i as u64, identity, &reading);
        }
    }
    let cost = rss().saturating_sub(before);
    history.read(|tracks| {
        assert_eq!(tracks.len(), CONTAINERS);
        for identity in &identities {
            assert_eq!(tracks.get(identity).unwrap().points().len(), POINTS);
        }
    });
    println!(
        "history: {CONTAINERS} containers x {POINTS} points: {:.2} MiB resident, {} bytes per container",
        cost as f64 / (1 << 20) as f64,
        cost / CONTAINERS as u64
    );
    // 8 bytes a point, and per container its track and map entry: about 1.2 KiB.
    assert!(
        cost < 2 << 20,
        "1,000 full histories cost {cost} bytes, more than 2 MiB"
    );
}
