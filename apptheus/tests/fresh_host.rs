//! A host that has never run the daemon: no tracefs mounted. The daemon is started in a mount
//! namespace of its own where tracefs (and debugfs's view of it) is unmounted, as on a fresh
//! boot, and must mount it, start and monitor a launcher.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{Client, Daemon, bin};

#[test]
fn the_daemon_mounts_tracefs_on_a_host_that_has_none() {
    // The daemon's flags follow; unshare runs without forking, so the pid stays the daemon's.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("apptheus-fresh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c 'for m in /sys/kernel/tracing /sys/kernel/debug/tracing; do while umount \"$m\" 2>/dev/null; do :; done; done; test -d /sys/kernel/tracing/events && {{ echo tracefs still mounted >&2; exit 9; }}; exec \"$0\" \"$@\"' {} \"$@\"\n",
            bin("apptheus").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let trust = format!("--trust.path={}", bin("apptheus-exec").display());
    let d = Daemon::start_exe(&wrapper, &[&trust], &[], Client::plain());
    assert!(
        d.log_text().contains("mounted tracefs"),
        "the daemon did not mount tracefs itself:\n{}",
        d.log_text()
    );
    let mut w = d.exec_workload(&["ready", "wait"]);
    w.ready();
    d.metrics_showing(&format!("container=\"apptheus-exec_{}\"", w.pid()));
    w.go();
    w.wait();
}
