//! How a container ended (its launcher's exit status, failed exits, OOM kills) and its network
//! traffic, counted in the kernel, through a real daemon.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{Daemon, Workload, bin, cgroups::TestCgroup, eventually, sample, workload_bin};

fn label(pid: i32) -> String {
    format!("container=\"apptheus-exec_{pid}\"")
}

/// Wait until `name{label}` is at least `min`; the metrics text when it is.
fn at_least(d: &Daemon, name: &str, label: &str, min: f64) -> String {
    let mut last = None;
    eventually(Duration::from_secs(20), || {
        let m = d.metrics();
        last = sample(&m, name, label);
        last.is_some_and(|v| v >= min).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "{name}{{{label}}} is {last:?}, not >= {min}; log:\n{}",
            d.log_text()
        )
    })
}

/// `apptheus_container_failed_exits_total` of the container labelled `label` for `reason`.
fn failed(m: &str, label: &str, reason: &str) -> Option<f64> {
    let reason = format!("reason=\"{reason}\"");
    m.lines()
        .filter(|l| l.starts_with("apptheus_container_failed_exits_total{"))
        .find(|l| l.contains(label) && l.contains(&reason))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Wait until the container is shown (admitted).
fn shown(d: &Daemon, label: &str) {
    d.metrics_showing(label);
}

/// The value of `name{label}` once the container ended (its exit code shows only then).
fn ended_with(d: &Daemon, label: &str) -> String {
    at_least(d, "apptheus_container_end_time_seconds", label, 0.0)
}

#[test]
fn a_non_zero_exit_is_the_containers_exit_code() {
    let d = Daemon::start(&["--monitor.interval=100ms"]);
    let mut w = d.exec_workload(&["ready", "wait", "exit:3"]);
    w.ready();
    let l = label(w.pid());
    shown(&d, &l);
    w.go();
    assert_eq!(
        w.wait().code(),
        Some(3),
        "apptheus-exec passes the status on"
    );
    let m = ended_with(&d, &l);
    assert_eq!(
        sample(&m, "apptheus_container_exit_code", &l),
        Some(3.0),
        "{m}"
    );
    let failed = failed(&m, &l, "exit_code");
    // The workload and apptheus-exec both exited 3.
    assert!(failed.is_some_and(|n| n >= 1.0), "{failed:?}\n{m}");
}

#[test]
fn a_command_killed_by_sigterm_ends_with_143() {
    let d = Daemon::start(&["--monitor.interval=100ms"]);
    // The shell kills itself once the test lets it go on.
    let mut w = d.exec(&["sh", "-c", "echo ready; read x; kill -TERM $$"]);
    w.ready();
    let l = label(w.pid());
    shown(&d, &l);
    w.go();
    assert_eq!(w.wait().code(), Some(143));
    let m = ended_with(&d, &l);
    assert_eq!(
        sample(&m, "apptheus_container_exit_code", &l),
        Some(143.0),
        "{m}"
    );
    let signal = failed(&m, &l, "signal");
    assert!(signal.is_some_and(|n| n >= 1.0), "{signal:?}\n{m}");
}

/// A job's cgroup with a 64 MiB limit (v1 memory hierarchy or the unified tree, whichever this
/// machine has), the launcher alone in it; the container allocates 200 MiB.
#[test]
fn a_container_over_its_jobs_memory_limit_counts_an_oom_kill() {
    let d = Daemon::start(&["--monitor.interval=100ms"]);
    let job = TestCgroup::new("apptheus-test-oom", &["memory"]);
    job.limit_memory(64 << 20);
    let script = format!(
        "{}exec {} --socket={} -- {} ready wait alloc:200 ready wait",
        job.enter_script(),
        bin("apptheus-exec").display(),
        d.socket.display(),
        workload_bin().display()
    );
    let mut w = Workload::spawn_cmd(Command::new("sh").args(["-c", &script]));
    w.ready();
    let l = label(w.pid());
    shown(&d, &l);
    w.go();
    assert_eq!(w.wait().code(), Some(137), "killed by the OOM killer");
    let m = ended_with(&d, &l);
    assert_eq!(
        sample(&m, "apptheus_container_exit_code", &l),
        Some(137.0),
        "{m}"
    );
    let kills = sample(&m, "apptheus_container_oom_kills_total", &l);
    assert!(kills.is_some_and(|n| n >= 1.0), "{kills:?}\n{m}");
}

const MIB20: f64 = 20.0 * 1024.0 * 1024.0;

#[test]
fn a_download_on_loopback_is_counted_and_an_idle_neighbour_stays_near_zero() {
    let d = Daemon::start(&["--monitor.interval=100ms"]);
    // The server is outside every container.
    let mut server = Workload::spawn(&["serve:20", "wait"]);
    let port = server.line();
    let port = port.strip_prefix("port ").expect("port line");
    let mut idle = d.exec_workload(&["ready", "wait"]);
    idle.ready();
    let mut w = d.exec_workload(&["ready", "wait", &format!("fetch:{port}:2"), "ready", "wait"]);
    w.ready();
    let (l, idle_l) = (label(w.pid()), label(idle.pid()));
    shown(&d, &l);
    shown(&d, &idle_l);
    w.go();
    let fetched: f64 = w.line().strip_prefix("fetched ").unwrap().parse().unwrap();
    assert!(fetched > 2.0 * MIB20, "{fetched}");
    w.ready();
    let m = at_least(
        &d,
        "apptheus_container_network_receive_bytes_total",
        &l,
        2.0 * MIB20,
    );
    let rx = sample(&m, "apptheus_container_network_receive_bytes_total", &l).unwrap();
    let tx = sample(&m, "apptheus_container_network_transmit_bytes_total", &l).unwrap();
    let packets = sample(&m, "apptheus_container_network_receive_packets_total", &l).unwrap();
    let idle_rx = sample(
        &m,
        "apptheus_container_network_receive_bytes_total",
        &idle_l,
    );
    println!(
        "loopback download: received {rx} bytes in {packets} packets, sent {tx} (sent by the server: {}); idle neighbour {idle_rx:?}",
        2.0 * MIB20
    );
    assert!(rx < 2.0 * MIB20 * 1.2, "{rx} received for {}", 2.0 * MIB20);
    assert!(packets >= 2.0 * MIB20 / 65536.0, "{packets} packets");
    assert!(
        idle_rx.is_some_and(|v| v < 10_000.0),
        "the idle neighbour received {idle_rx:?}"
    );
    w.go();
    idle.go();
    w.wait();
    idle.wait();
    server.go();
    server.wait();
}

#[test]
fn a_download_inside_a_private_network_namespace_is_counted() {
    let d = Daemon::start(&["--monitor.interval=100ms"]);
    let ip = Path::new("/usr/sbin/ip");
    assert!(
        ip.exists(),
        "this test needs {} (iproute2) to bring up loopback in a new network namespace",
        ip.display()
    );
    // Its own loopback, its own server: all of it inside the container.
    let script = format!(
        "ip link set lo up && exec {} ready wait serve:20 fetch:0:2 ready wait",
        workload_bin().display()
    );
    let mut w = d.exec(&["unshare", "-n", "sh", "-c", &script]);
    w.ready();
    let l = label(w.pid());
    shown(&d, &l);
    w.go();
    assert!(w.line().starts_with("port "));
    let fetched: f64 = w.line().strip_prefix("fetched ").unwrap().parse().unwrap();
    assert!(fetched > 2.0 * MIB20, "{fetched}");
    w.ready();
    let m = at_least(
        &d,
        "apptheus_container_network_receive_bytes_total",
        &l,
        2.0 * MIB20,
    );
    println!(
        "private namespace: received {:?}, sent {:?}",
        sample(&m, "apptheus_container_network_receive_bytes_total", &l),
        sample(&m, "apptheus_container_network_transmit_bytes_total", &l)
    );
    w.go();
    w.wait();
}
