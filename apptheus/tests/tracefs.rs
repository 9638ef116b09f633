//! A fresh host has no tracefs mounted: loading the tracker mounts it. (Its own test binary, so
//! no other test reads tracefs while it is unmounted.)
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::path::Path;

use apptheus::tracker::{TRACEFS, Tracker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_mounts_tracefs_when_missing() {
    common::require_root();
    if Path::new(TRACEFS).join("events").is_dir() {
        // Detach lazily: attached programs do not depend on the mount.
        nix::mount::umount2(TRACEFS, nix::mount::MntFlags::MNT_DETACH)
            .unwrap_or_else(|e| panic!("cannot unmount {TRACEFS} to set up the test: {e}"));
    }
    assert!(
        !Path::new(TRACEFS).join("events").is_dir(),
        "tracefs still mounted"
    );
    let (_tracker, _events) = Tracker::load(apptheus::tracker::Limits::default())
        .unwrap_or_else(|e| panic!("tracker cannot load: {e:#}"));
    assert!(
        Path::new(TRACEFS)
            .join("events/sched/sched_process_fork/format")
            .is_file()
    );
}
