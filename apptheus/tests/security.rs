//! Hostile and unlucky peers: refusals by reason, limits, nesting, floods.
mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, Workload, eventually, sample};

/// A root-owned private directory with a copy of the workload program, to trust.
fn trusted_copy(d: &Daemon, name: &str) -> PathBuf {
    let dir = d.dir.path().join("trusted");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.join(name);
    std::fs::copy(common::workload_bin(), &p).unwrap();
    p
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

/// A daemon whose trust list is one path, with the usual test isolation.
fn daemon_trusting(paths: &[&Path], extra: &[&str]) -> Daemon {
    // Daemon::start trusts apptheus-exec; a later --trust.path would be a duplicate flag, so the
    // trusted paths go in through a second start with the dir prepared first.
    let joined = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(";");
    let mut args = vec![format!("--trust.path={joined}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_with_trust(&refs)
}

#[test]
fn replaced_binary_is_refused_and_an_upgrade_is_accepted() {
    let setup = tempfile::tempdir().unwrap();
    let dir = setup.path().join("bin");
    std::fs::create_dir(&dir).unwrap();
    let launcher = dir.join("launcher");
    std::fs::copy(common::workload_bin(), &launcher).unwrap();
    let d = daemon_trusting(&[&launcher], &[]);
    let sock = d.socket.display().to_string();
    let connect = format!("connect:{sock}");
    // Started from the old file, connects after the file was replaced.
    let mut old = Workload::spawn_cmd(
        Command::new(&launcher).args(["ready", "wait", &connect, "ready", "wait"]),
    );
    old.ready();
    let fresh = dir.join("launcher.new");
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
    let _ = setup;
}

#[test]
fn copy_elsewhere_and_exit_right_after_connecting_are_refused() {
    let d = Daemon::start(&[]);
    let copy = trusted_copy(&d, "not-trusted");
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
    let setup = tempfile::tempdir().unwrap();
    let dir = setup.path().join("bin");
    std::fs::create_dir(&dir).unwrap();
    let launcher = dir.join("launcher");
    std::fs::copy(common::workload_bin(), &launcher).unwrap();
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
        (sample(&m, "apptheus_container_processes", &label) == Some(3.0)).then_some(m)
    });
    assert!(
        m.is_some(),
        "outer container must count itself, the inner launcher and the workload:\n{}",
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
    assert!(!d.exited(), "the daemon died");
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    w.go();
    w.wait();
}
