//! A job array landing on a node: one user's launchers by the hundred at once, with the default
//! admission limits, are delayed, not dropped, and another user's launcher goes by meanwhile.
//! Host only (not kernel dependent; 600 launchers take minutes in an emulated guest).
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, Workload, containers_of, eventually, rejections, sample, workload_bin};

fn daemon() -> Daemon {
    let trust = format!("--trust.path={}", workload_bin().display());
    Daemon::start_with_trust(&[trust.as_str(), "--monitor.interval=100ms"])
}

/// The workload as `uid` (root's, made the user's before it connects), waiting for a line
/// before it connects, then for another before it exits.
fn user_launcher(d: &Daemon, uid: u32) -> Workload {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let connect = format!("connect:{}", d.socket.display());
    Workload::spawn_cmd(Command::new(workload_bin()).args([
        &format!("as-user:{uid}"),
        "wait",
        &connect,
        "ready",
        "wait",
    ]))
}

#[test]
fn a_job_array_of_600_is_delayed_not_dropped_and_others_go_by() {
    // Default admission limits: a burst of 256, then 50 a second, waiting up to 30 s.
    let d = daemon();
    let (array, other) = (64_051, 64_052);
    let mut launchers: Vec<Workload> = (0..600).map(|_| user_launcher(&d, array)).collect();
    for l in &mut launchers {
        l.go();
    }
    // While the array's launchers wait for their turns, another user's is admitted at once.
    let mut theirs = user_launcher(&d, other);
    let from = d.log_text().len();
    let t = Instant::now();
    theirs.go();
    d.wait_log(
        from,
        &["container started", &format!("workload_{}", theirs.pid())],
    );
    let other_waited = t.elapsed();
    println!("another user's launcher admitted in {other_waited:?} during the array's burst");
    assert!(
        other_waited < Duration::from_secs(1),
        "another user's launcher waited {other_waited:?} behind a job array"
    );
    // All 600 are admitted: none refused.
    let all = eventually(Duration::from_secs(120), || {
        let m = d.metrics();
        (containers_of(&m, array) == 600).then_some(m)
    });
    let m = d.metrics();
    assert!(
        all.is_some(),
        "{} of 600 launchers admitted, {} refused by limit:\n{}",
        containers_of(&m, array),
        rejections(&m, "limit"),
        d.log_text()
            .lines()
            .filter(|l| l.contains("refused"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(rejections(&m, "limit"), 0.0);
    let waited = sample(&m, "apptheus_gateway_admission_wait_seconds_count", "").unwrap_or(0.0);
    let longest = m
        .lines()
        .filter(|l| l.starts_with("apptheus_gateway_admission_wait_seconds_bucket{"))
        .find(|l| l.ends_with(" 601"))
        .map(str::to_string);
    println!(
        "launchers that took a turn: {waited}; the first bucket holding them all: {longest:?}"
    );
    assert_eq!(waited, 601.0);
    drop(launchers);
}
