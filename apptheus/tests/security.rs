//! Hostile and unlucky peers: refusals by reason, limits, nesting, floods.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, Workload, eventually, sample};

/// A copy of the workload program in a root-owned temporary directory: a launcher the test can
/// trust, replace or leave untrusted. Keep the TempDir alive as long as the path is used.
fn launcher_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.path().join(name);
    std::fs::copy(common::workload_bin(), &p).unwrap();
    (dir, p)
}

fn rejections(d: &Daemon, reason: &str) -> f64 {
    sample(
        &d.metrics(),
        "apptheus_gateway_rejections_total",
        &format!("reason=\"{reason}\""),
    )
    .unwrap_or(-1.0)
}

fn wait_rejections(d: &Daemon, reason: &str, n: f64) -> f64 {
    eventually(Duration::from_secs(5), || {
        (rejections(d, reason) >= n).then_some(())
    })
    .map_or_else(|| rejections(d, reason), |_| n)
}

/// A daemon trusting exactly `path`.
fn daemon_trusting(path: &Path, extra: &[&str]) -> Daemon {
    let trust = format!("--trust.path={}", path.display());
    let mut args = vec![trust.as_str()];
    args.extend_from_slice(extra);
    Daemon::start_with_trust(&args)
}

#[test]
fn replaced_binary_is_refused_and_an_upgrade_is_accepted() {
    let (dir, launcher) = launcher_copy("launcher");
    let d = daemon_trusting(&launcher, &[]);
    let sock = d.socket.display().to_string();
    let connect = format!("connect:{sock}");
    // Started from the old file, connects after the file was replaced.
    let mut old = Workload::spawn_cmd(
        Command::new(&launcher).args(["ready", "wait", &connect, "ready", "wait"]),
    );
    old.ready();
    let fresh = dir.path().join("launcher.new");
    std::fs::copy(common::workload_bin(), &fresh).unwrap();
    std::fs::rename(&fresh, &launcher).unwrap();
    old.go();
    old.ready();
    assert_eq!(
        wait_rejections(&d, "replaced", 1.0),
        1.0,
        "{}",
        d.log_text()
    );
    // A launcher started from the new file (the upgrade) is accepted, no restart needed.
    let mut new =
        Workload::spawn_cmd(Command::new(&launcher).args([connect.as_str(), "ready", "wait"]));
    new.ready();
    let label = format!("container=\"launcher_{}\"", new.pid());
    assert!(
        eventually(Duration::from_secs(3), || d
            .metrics()
            .contains(&label)
            .then_some(()))
        .is_some(),
        "{}",
        d.log_text()
    );
    assert!(!d.metrics().contains(&format!("launcher_{}", old.pid())));
    old.go();
    new.go();
    old.wait();
    new.wait();
}

#[test]
fn copy_elsewhere_and_exit_right_after_connecting_are_refused() {
    let d = Daemon::start(&[]);
    let (_dir, copy) = launcher_copy("not-trusted");
    let sock = d.socket.display().to_string();
    let mut w = Workload::spawn_cmd(Command::new(&copy).args([
        format!("connect:{sock}").as_str(),
        "ready",
        "wait",
    ]));
    w.ready();
    assert_eq!(wait_rejections(&d, "untrusted", 1.0), 1.0);
    w.go();
    w.wait();
    assert!(
        d.cgroup_dirs().is_empty(),
        "cgroups made for refused peers: {:?}",
        d.cgroup_dirs()
    );
}

#[test]
fn peer_dying_between_exe_check_and_decision_is_refused() {
    // The test hook holds the decision 500 ms after the exe check; the peer exits meanwhile, so
    // only the pidfd check stands between it and being trusted.
    let (_dir, launcher) = launcher_copy("launcher");
    let d = Daemon::start_env(
        &[&format!("--trust.path={}", launcher.display())],
        &[("APPTHEUS_TEST_DECISION_DELAY_MS", "500")],
    );
    let sock = d.socket.display().to_string();
    let st = Command::new(&launcher)
        .args([format!("connect:{sock}").as_str(), "exit:0"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        wait_rejections(&d, "vanished", 1.0),
        1.0,
        "{}",
        d.log_text()
    );
    assert!(d.cgroup_dirs().is_empty());
}

#[test]
fn max_containers_refuses_exactly_the_one_over_the_limit() {
    let d = Daemon::start(&["--gateway.max-containers=3"]);
    let mut ws: Vec<Workload> = (0..4)
        .map(|_| d.exec_workload(&["ready", "wait"]))
        .collect();
    ws.iter_mut().for_each(|w| w.ready());
    assert_eq!(wait_rejections(&d, "limit", 1.0), 1.0);
    let m = eventually(Duration::from_secs(3), || {
        let m = d.metrics();
        (sample(&m, "apptheus_containers", "") == Some(3.0)).then_some(m)
    })
    .unwrap_or_else(|| panic!("3 live containers:\n{}", d.metrics()));
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("apptheus_container_info{"))
            .count(),
        3
    );
    assert_eq!(sample(&m, "apptheus_containers", ""), Some(3.0));
    ws.iter_mut().for_each(|w| w.go());
    ws.iter_mut().for_each(|w| {
        w.wait();
    });
}

#[test]
fn launcher_inside_a_container_is_refused_and_stays_counted_there() {
    let d = Daemon::start(&["--monitor.interval=100ms"]);
    let exec = common::bin("apptheus-exec");
    let sock = format!("--socket={}", d.socket.display());
    let wl = common::workload_bin();
    // apptheus-exec -- apptheus-exec -- workload: the inner launcher is inside the outer container.
    let mut outer = Workload::spawn_cmd(
        Command::new(&exec)
            .args([sock.as_str(), "--", "sh", "-c"])
            .arg(format!(
                // The pause lets the outer launcher be admitted first; the shell then becomes the
                // inner launcher, keeping its pid.
                "sleep 0.5; exec {} {sock} -- {} ready wait",
                exec.display(),
                wl.display()
            )),
    );
    outer.ready();
    assert_eq!(wait_rejections(&d, "nested", 1.0), 1.0, "{}", d.log_text());
    let label = format!("container=\"apptheus-exec_{}\"", outer.pid());
    let m = eventually(Duration::from_secs(3), || {
        let m = d.metrics();
        (sample(&m, "apptheus_container_processes", &label) == Some(2.0)).then_some(m)
    });
    assert!(
        m.is_some(),
        "outer container must count the inner launcher (its CMD) and the workload:\n{}",
        d.metrics()
    );
    assert_eq!(
        d.metrics()
            .lines()
            .filter(|l| l.starts_with("apptheus_container_info{"))
            .count(),
        1
    );
    outer.go();
    outer.wait();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn untrusted_flood_costs_bounded_memory_and_metrics_keep_answering() {
    let mut d = Daemon::start(&["--monitor.interval=200ms"]);
    let mut w = d.exec_workload(&["ready", "wait"]);
    w.ready();
    let label = format!("container=\"apptheus-exec_{}\"", w.pid());
    assert!(
        eventually(Duration::from_secs(3), || d
            .metrics()
            .contains(&label)
            .then_some(()))
        .is_some()
    );
    let before = rss_kib(d.child.id());
    let started = Instant::now();
    let sock = d.socket.clone();
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut b = [0u8; 1];
                        let _ = std::io::Read::read(&mut s, &mut b);
                    }
                }
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    while clients.iter().any(|c| !c.is_finished()) {
        let t = Instant::now();
        let m = d.metrics();
        worst = worst.max(t.elapsed());
        assert!(
            m.contains(&label),
            "the trusted container's series vanished during the flood"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    clients.into_iter().for_each(|c| c.join().unwrap());
    let secs = started.elapsed().as_secs_f64();
    let after = rss_kib(d.child.id());
    let refused = wait_rejections(&d, "untrusted", 10_000.0);
    println!(
        "flood: 10000 connections in {secs:.2} s ({:.0}/s), RSS {before} KiB -> {after} KiB, worst /metrics {worst:?}",
        10_000.0 / secs
    );
    assert_eq!(refused, 10_000.0);
    // Each refusal counted, not each logged: the journal gets a few lines per 10 s.
    let lines = d
        .log_text()
        .lines()
        .filter(|l| l.contains("launcher connection refused"))
        .count();
    assert!(
        lines <= 5 * (secs as usize / 10 + 2),
        "{lines} refusal lines for 10000"
    );
    assert!(!d.exited(), "the daemon died");
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    w.go();
    w.wait();
}
