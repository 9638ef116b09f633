//! The daemon end to end: the real binary, real launchers, real cgroups, a real HTTP client.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, bin, cgroup_of, cgroups::TestCgroup, descendants, eventually, sample};

/// `container="<id>"` of an apptheus-exec launcher.
fn exec_label(pid: i32) -> String {
    format!("container=\"apptheus-exec_{pid}\"")
}

/// The `cgroup` label of a container's info series.
fn cgroup_label(metrics: &str, container: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with("apptheus_container_info{") && l.contains(container))
        .and_then(|l| l.split("cgroup=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .map(str::to_owned)
}

#[test]
fn workload_forked_before_connecting_is_measured_whole() {
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    // apptheus-exec's child connects, then becomes the workload, which makes its own tree.
    let mut w = d.exec_workload(&[
        "tree:2:1", "ready", "wait", "forks:5", "burn:1", "alloc:64", "ready", "wait",
    ]);
    w.ready();
    let label = exec_label(w.pid());
    // Visible, with the whole tree sampled: the workload and its 4 descendants (apptheus-exec
    // itself waits outside the container).
    let m = eventually(Duration::from_secs(2), || {
        let m = d.metrics();
        (sample(&m, "apptheus_container_processes", &label) == Some(5.0)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "container {label} not in /metrics within 2 s:\n{}",
            d.log_text()
        )
    });
    let cg = cgroup_label(&m, &label).expect("cgroup label");
    assert!(
        cg.ends_with(&format!("/{}/apptheus-exec_{}", d.parent, w.pid())),
        "{cg}"
    );
    let tree = descendants(w.pid());
    assert_eq!(
        tree.len(),
        2 + 2,
        "the workload's 2 children, 2 grandchildren: {tree:?}"
    );
    let suffix = format!("/{}/apptheus-exec_{}", d.parent, w.pid());
    for pid in tree.iter().copied().chain([w.pid()]) {
        // The label names the memory hierarchy's path; each hierarchy has its own base.
        assert_eq!(
            cgroup_of(pid, "memory").as_deref(),
            Some(cg.as_str()),
            "pid {pid} in memory"
        );
        for ctrl in ["cpu", "cpuacct", "pids", "blkio", ""] {
            let got = cgroup_of(pid, ctrl).unwrap_or_default();
            assert!(got.ends_with(&suffix), "pid {pid} in {ctrl:?}: {got}");
        }
    }
    // The tree is forked while apptheus-exec connects: depending on who is first, its forks were
    // adopted or counted. Count from here on.
    let forks_before = sample(&m, "apptheus_container_forks_total", &label).unwrap_or(-1.0);
    assert!((0.0..=4.0).contains(&forks_before), "{forks_before}");
    w.go();
    assert_eq!(w.line(), "alloc ok");
    w.ready();
    let m = eventually(Duration::from_secs(3), || {
        let m = d.metrics();
        let cpu = sample(&m, "apptheus_container_cpu_usage_seconds_total", &label)?;
        let mem = sample(&m, "apptheus_container_memory_usage_bytes", &label)?;
        (cpu >= 0.8 && mem >= 64.0 * 1024.0 * 1024.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("CPU never reached 0.8 s or memory 64 MiB:\n{}", d.metrics()));
    let cpu = sample(&m, "apptheus_container_cpu_usage_seconds_total", &label).unwrap();
    println!("attributed CPU: {cpu:.3} s");
    assert!(
        sample(&m, "apptheus_container_memory_usage_bytes", &label).unwrap()
            >= 64.0 * 1024.0 * 1024.0
    );
    assert!(sample(&m, "apptheus_container_pids", &label).unwrap() >= 5.0);
    assert_eq!(
        sample(&m, "apptheus_container_forks_total", &label),
        Some(forks_before + 5.0)
    );
    assert_eq!(
        sample(&m, "apptheus_container_processes", &label),
        Some(5.0),
        "workload, tree of 4"
    );
    assert!(m.contains(&format!("{label},user=\"root\"")));
    w.go();
    assert!(w.wait().success());
}

/// SIGKILLs its pids when dropped: what a test forked outside a `Workload`'s tree.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A workload whose main thread exits while another thread runs on (pthread_exit) is not gone
/// (the kernels before 6.18 do not say so in their exit tracepoint): it and the child that
/// thread forks after are counted in the container, in its cgroup, and they keep the container
/// alive when the launcher is gone, until the last thread exits.
#[test]
fn a_process_whose_main_thread_exited_keeps_its_container() {
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let mut w = d.exec_workload(&["ready", "wait", "leader-exit", "sleeper", "ready", "wait"]);
    let pid: i32 = w.line().strip_prefix("ready ").unwrap().parse().unwrap();
    let label = exec_label(w.pid());
    let processes = |m: &str| sample(m, "apptheus_container_processes", &label);
    let m = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        (processes(&m) == Some(1.0)).then_some(m)
    })
    .unwrap_or_else(|| panic!("container {label} not shown:\n{}", d.log_text()));
    let cg = cgroup_label(&m, &label).expect("cgroup label");
    let forks = sample(&m, "apptheus_container_forks_total", &label).unwrap();
    w.go();
    let child: i32 = w.line().strip_prefix("sleeper ").unwrap().parse().unwrap();
    let _guard = KillOnDrop(vec![child]);
    w.ready();
    common::leader_exited(pid);
    // The process without its main thread, and the child that forked.
    let m = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        (processes(&m) == Some(2.0)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "the process or its child is not counted (processes {:?}):\n{}",
            processes(&d.metrics()),
            d.log_text()
        )
    });
    assert_eq!(
        sample(&m, "apptheus_container_forks_total", &label),
        Some(forks + 1.0)
    );
    // The process's cgroup is its live thread's (a zombie's reads as the root).
    let thread = common::other_live_thread(pid).expect("a live thread");
    for p in [thread, child] {
        assert_eq!(cgroup_of(p, "memory").as_deref(), Some(cg.as_str()), "{p}");
    }
    // apptheus-exec goes, and the connection with it: the container lives on in the process
    // and its child.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.exec_pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    w.child.wait().unwrap();
    let live_with = |n: f64, what: &str| {
        let m = eventually(Duration::from_secs(10), || {
            let m = d.metrics();
            (processes(&m) == Some(n)).then_some(m)
        })
        .unwrap_or_else(|| panic!("{what}: processes {:?}", processes(&d.metrics())));
        assert_eq!(
            sample(&m, "apptheus_container_end_time_seconds", &label),
            None,
            "{what}: the container ended while it has processes:\n{}",
            d.log_text()
        );
    };
    live_with(2.0, "without apptheus-exec");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    live_with(1.0, "without the child");
    // The last thread exits: the container ends.
    w.go();
    eventually(Duration::from_secs(10), || {
        sample(&d.metrics(), "apptheus_container_end_time_seconds", &label)
    })
    .unwrap_or_else(|| panic!("the container did not end:\n{}", d.log_text()));
}

#[test]
fn untrusted_launcher_is_refused_and_counted() {
    let d = Daemon::start(&[]);
    let copy = d.dir.path().join("apptheus-exec");
    std::fs::copy(bin("apptheus-exec"), &copy).unwrap();
    let out = Command::new(&copy)
        .arg(format!("--socket={}", d.socket.display()))
        .args(["--", "sleep", "1.5"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = out.id() as i32;
    let out = out.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(stderr.contains("refused"), "{stderr}");
    let m = d.metrics();
    assert_eq!(
        sample(
            &m,
            "apptheus_gateway_rejections_total",
            "reason=\"untrusted\""
        ),
        Some(1.0)
    );
    assert!(!m.contains(&exec_label(pid)));
    assert!(
        d.cgroup_dirs().is_empty(),
        "cgroups created for an untrusted peer: {:?}",
        d.cgroup_dirs()
    );
    assert!(d.log_text().contains("launcher connection refused"));
}

#[test]
fn untrusted_connection_is_closed_within_a_second() {
    let d = Daemon::start(&[]);
    // This test binary is no trusted launcher.
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut s, &mut buf).expect("the daemon must close within 1 s");
    assert_eq!(n, 0);
}

/// An ended container shows its final values (no live process, its end time) for the
/// retention, then its series and its cgroups go. Every step is waited for, never slept: in a
/// TCG guest an exit reaches /metrics a second or more after it on a loaded machine (the test
/// prints how long it took).
#[test]
fn ended_container_stays_for_retention_then_goes() {
    const RETENTION: Duration = Duration::from_secs(3);
    let d = Daemon::start(&["--monitor.interval=100ms", "--container.retention=3s"]);
    let mut w = d.exec_workload(&["ready", "wait", "burn:0.2"]);
    w.ready();
    let label = exec_label(w.pid());
    assert!(
        eventually(Duration::from_secs(5), || d
            .metrics()
            .contains(&label)
            .then_some(()))
        .is_some()
    );
    let dirs = d.cgroup_dirs();
    assert!(!dirs.is_empty());
    let before_go = unix_now();
    w.go();
    assert!(w.wait().success());
    let exited = Instant::now();
    // From the exit on: the ended series (no live process, an end time), until it goes.
    let mut ended: Option<(f64, String)> = None;
    let gone_at = loop {
        let m = d.metrics();
        if !m.contains(&label) {
            break unix_now();
        }
        if ended.is_none()
            && sample(&m, "apptheus_container_processes", &label) == Some(0.0)
            && sample(&m, "apptheus_container_end_time_seconds", &label).is_some()
        {
            println!(
                "ended container shown {:.0} ms after its launcher's exit",
                exited.elapsed().as_secs_f64() * 1000.0
            );
            ended = Some((unix_now(), m.clone()));
        }
        assert!(
            exited.elapsed() < RETENTION + Duration::from_secs(10),
            "series still there 10 s after the retention:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (seen_at, m) =
        ended.expect("the series went without ever showing 0 processes and an end time");
    assert!(sample(&m, "apptheus_container_cpu_usage_seconds_total", &label).unwrap() >= 0.15);
    // The end time is the exit's (an exit event): after the workload was let go, before the
    // test saw it.
    let end = sample(&m, "apptheus_container_end_time_seconds", &label).unwrap();
    assert!(
        before_go <= end && end <= seen_at,
        "end time {end} not between the go ({before_go}) and the first sight of it ({seen_at})"
    );
    // Kept for the whole retention, counted from the end.
    assert!(
        gone_at - end >= RETENTION.as_secs_f64() - 0.01,
        "the series went {:.2} s after the end, before the {RETENTION:?} retention",
        gone_at - end
    );
    println!("series gone {:.2} s after the end", gone_at - end);
    let left = eventually(Duration::from_secs(10), || {
        let left: Vec<_> = d
            .cgroup_dirs()
            .into_iter()
            .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
            .filter(|e| e.path().is_dir())
            .collect();
        left.is_empty().then_some(())
    });
    assert!(left.is_some(), "container cgroup dirs left behind");
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn fifty_launchers_each_get_their_own_tree() {
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let mut ws: Vec<_> = (0..50)
        .map(|_| d.exec_workload(&["tree:1:1", "ready", "wait"]))
        .collect();
    ws.iter_mut().for_each(|w| w.ready());
    let all = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        ws.iter()
            .all(|w| m.contains(&exec_label(w.pid())))
            .then_some(m)
    })
    .expect("50 containers in /metrics");
    assert_eq!(
        all.lines()
            .filter(|l| l.starts_with("apptheus_container_info{"))
            .count(),
        50
    );
    // A tree that is still being walked when its container shows (the walk is bounded per
    // turn and goes on at the next pass: a loaded machine, 50 launchers at once) is contained
    // within a few passes.
    for w in &ws {
        let cg = cgroup_label(&all, &exec_label(w.pid())).unwrap();
        let tree = descendants(w.pid());
        assert_eq!(tree.len(), 2, "the workload's child and grandchild");
        for pid in tree.into_iter().chain([w.pid()]) {
            let moved = eventually(Duration::from_secs(5), || {
                (cgroup_of(pid, "memory").as_deref() == Some(cg.as_str())).then_some(())
            });
            assert!(
                moved.is_some(),
                "pid {pid} of launcher {} in {:?}, not {cg}; walks cut short: {:?}",
                w.pid(),
                cgroup_of(pid, "memory"),
                sample(&d.metrics(), "apptheus_adoption_walks_cut_short_total", "")
            );
        }
    }
    for w in ws.iter_mut() {
        w.go();
    }
    for mut w in ws {
        assert!(w.wait().success());
    }
}

#[test]
fn nested_placement_keeps_the_launchers_memory_limit() {
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let base = TestCgroup::new("apptheus-test-limit", &["memory"]);
    base.limit_memory(64 << 20);
    let script = format!(
        "{}exec {} --socket={} -- {} ready wait alloc:256 ready wait",
        base.enter_script(),
        bin("apptheus-exec").display(),
        d.socket.display(),
        common::workload_bin().display()
    );
    let mut w = common::Workload::spawn_cmd(Command::new("sh").args(["-c", &script]));
    w.ready();
    let label = exec_label(w.pid());
    let m = eventually(Duration::from_secs(3), || {
        let m = d.metrics();
        m.contains(&label).then_some(m)
    })
    .unwrap_or_else(|| panic!("container not exported:\n{}", d.log_text()));
    // The launcher's cgroup holds nothing but the container: it is the container's cgroup.
    let cg = cgroup_label(&m, &label).unwrap();
    assert_eq!(cg, base.rel(), "not the launcher's own cgroup");
    assert!(
        !base.dir("memory").join(&d.parent).exists(),
        "a directory was made in it"
    );
    assert_eq!(
        sample(&m, "apptheus_container_spec_memory_limit_bytes", &label),
        Some(67108864.0)
    );
    w.go();
    // The workload is killed by the OOM killer (or its allocation fails): it never says "ok".
    let status = w.wait();
    assert!(
        !status.success(),
        "a 256 MiB allocation succeeded under a 64 MiB limit"
    );
    println!("workload under the limit ended with {status}");
}

#[test]
fn a_launcher_sharing_its_cgroup_gets_a_cgroup_inside_it() {
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let base = TestCgroup::new("apptheus-test-shared", &["memory"]);
    base.limit_memory(128 << 20);
    let dir = base.dir("memory");
    // A process that is not the launcher's lives in the same cgroup (a batch script's shell).
    let mut foreign = common::Workload::spawn_cmd(
        Command::new("sh").args(["-c", &format!("{}exec sleep 600", base.enter_script())]),
    );
    eventually(Duration::from_secs(5), || {
        common::cgroups::procs(&dir)
            .contains(&foreign.pid())
            .then_some(())
    })
    .expect("the foreign process never entered the cgroup");
    let script = format!(
        "{}exec {} --socket={} -- {} ready wait",
        base.enter_script(),
        bin("apptheus-exec").display(),
        d.socket.display(),
        common::workload_bin().display()
    );
    let mut w = common::Workload::spawn_cmd(Command::new("sh").args(["-c", &script]));
    w.ready();
    let label = exec_label(w.pid());
    let m = eventually(Duration::from_secs(3), || {
        let m = d.metrics();
        m.contains(&label).then_some(m)
    })
    .unwrap_or_else(|| panic!("container not exported:\n{}", d.log_text()));
    let cg = cgroup_label(&m, &label).unwrap();
    assert!(
        cg.starts_with(&format!("{}/{}/", base.rel(), d.parent)),
        "container cgroup {cg} not inside the launcher's"
    );
    assert_eq!(
        sample(&m, "apptheus_container_spec_memory_limit_bytes", &label),
        Some(134217728.0)
    );
    // The foreign process stays where it was.
    assert!(common::cgroups::procs(&dir).contains(&foreign.pid()));
    w.go();
    assert!(w.wait().success());
    // Its own directory goes the moment it ends (a batch system removes the job's cgroup right
    // after its last process exits).
    eventually(Duration::from_secs(5), || {
        (!dir.join(&d.parent).exists()).then_some(())
    })
    .unwrap_or_else(|| panic!("the container's directory was left:\n{}", d.log_text()));
    foreign.child.kill().unwrap();
    foreign.child.wait().unwrap();
}

#[test]
fn exec_propagates_status_and_runs_without_daemon() {
    let d = Daemon::start(&[]);
    let st = d.exec(&["sh", "-c", "exit 7"]).wait();
    assert_eq!(st.code(), Some(7));
    let st = d.exec(&["sh", "-c", "kill -9 $$"]).wait();
    assert_eq!(st.code(), Some(137));
    let out = Command::new(bin("apptheus-exec"))
        .args([
            "--socket=/nonexistent/apptheus.sock",
            "--",
            "sh",
            "-c",
            "echo ran; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    let out = Command::new(bin("apptheus-exec"))
        .args(["--", "/nonexistent/cmd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    common::require_root();
    for (args, flag) in [
        (vec!["--monitor.interval=abc"], "--monitor.interval"),
        (vec!["--container.retention=5"], "--container.retention"),
        (vec!["--no-such-flag"], "--no-such-flag"),
        (vec!["--trust.path=bin/starter"], "--trust.path"),
        (vec!["--cgroup.placement=elsewhere"], "--cgroup.placement"),
        (
            vec!["--web.config.file=/etc/apptheus/web.yml"],
            "--web.config.file",
        ),
    ] {
        let out = Command::new(bin("apptheus")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn health_readiness_and_unknown_paths() {
    let d = Daemon::start(&[]);
    assert_eq!(d.get("/-/healthy").0, 200);
    assert_eq!(d.get("/-/ready").0, 200);
    assert_eq!(d.get("/nope").0, 404);
    assert_eq!(d.get("/api/v1/metrics").0, 404);
    let m = d.metrics();
    for name in [
        "apptheus_build_info{",
        "apptheus_containers ",
        "apptheus_sample_duration_seconds_bucket",
        "apptheus_ebpf_events_lost_total",
        "process_resident_memory_bytes",
        "apptheus_gateway_connections_total{outcome=\"accepted\"}",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn shutdown_removes_the_socket_and_leaves_processes_alone() {
    let mut d = Daemon::start(&[]);
    let mut w = d.exec_workload(&["ready", "wait"]);
    w.ready();
    assert!(
        eventually(Duration::from_secs(2), || d
            .metrics()
            .contains(&exec_label(w.pid()))
            .then_some(()))
        .is_some()
    );
    assert!(d.stop().success());
    assert!(!d.socket.exists(), "socket file left behind");
    // The launcher and its workload still run, untouched.
    assert!(w.child.try_wait().unwrap().is_none());
    w.go();
    assert!(w.wait().success());
}

#[test]
fn exec_passes_signals_on_and_is_quiet_on_a_normal_exit() {
    let d = Daemon::start(&[]);
    let mut w = d.exec_workload(&["ready", "sleep:30"]);
    w.ready();
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The command got SIGTERM (not blocked in it) and died of it: 128 + 15.
    assert_eq!(w.wait().code(), Some(143));
    assert!(started.elapsed() < Duration::from_secs(5));
    // A monitored command that ends normally: no warning about the connection.
    for _ in 0..10 {
        let out = Command::new(bin("apptheus-exec"))
            .arg(format!("--socket={}", d.socket.display()))
            .args(["--", "sh", "-c", "sleep 0.1"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    }
}

/// A new container is sampled and shown when it is admitted, not at the next sampling pass:
/// with an interval of an hour, it still shows up (with its cgroup's values).
#[test]
fn a_new_container_shows_without_waiting_for_the_next_pass() {
    let d = Daemon::start(&["--monitor.interval=1h"]);
    let mut w = d.exec_workload(&["ready", "wait"]);
    w.ready();
    let label = exec_label(w.pid());
    let shown = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        (sample(&m, "apptheus_container_processes", &label) == Some(1.0)
            && sample(&m, "apptheus_container_memory_usage_bytes", &label).is_some())
        .then_some(())
    });
    assert!(shown.is_some(), "not shown:\n{}", d.metrics());
    w.go();
    assert!(w.wait().success());
}

/// The gzip body is one gzip member, so that every client reads all of it: curl's decoder, for
/// one, stops after the first member.
#[test]
fn gzip_scrapes_are_whole_for_curl_too() {
    let d = Daemon::start(&["--monitor.interval=100ms"]);
    let mut w = d.exec_workload(&["ready", "wait"]);
    w.ready();
    let label = exec_label(w.pid());
    assert!(
        eventually(Duration::from_secs(5), || d
            .metrics()
            .contains(&label)
            .then_some(()))
        .is_some()
    );
    let curl = |compressed: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail"]);
        if compressed {
            cmd.arg("--compressed");
        }
        let out = cmd.arg(d.url("/metrics")).output().expect("run curl");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let (gz, plain) = (curl(true), curl(false));
    for text in [&gz, &plain] {
        assert!(text.contains("# TYPE process_cpu_seconds_total"));
        assert!(text.contains(&format!("apptheus_container_processes{{{label}")));
        assert!(text.ends_with('\n'));
    }
    assert_eq!(
        gz.lines().filter(|l| l.starts_with('#')).count(),
        plain.lines().filter(|l| l.starts_with('#')).count()
    );
    w.go();
    assert!(w.wait().success());
}

/// A launcher whose main thread exited before it connected (a user can make a trusted
/// launcher do so, e.g. with LD_PRELOAD): its `/proc/<pid>/exe` no longer resolves, so it is
/// refused (`vanished`); and were it admitted, its cgroup is its live thread's, so its
/// container would be inside it, never at a hierarchy's root (where its leader's `/proc`
/// cgroup file points), out of the job's limits.
#[test]
fn a_launcher_without_its_main_thread_never_gets_a_container_at_the_root() {
    let trust = format!("--trust.path={}", common::workload_bin().display());
    let d = Daemon::start_with_trust(&[&trust, "--monitor.interval=200ms"]);
    let connect = format!("connect:{}", d.socket.display());
    let mut w = common::Workload::spawn(&["leader-exit", &connect, "ready", "wait"]);
    w.ready();
    let id = format!("workload_{}", w.pid());
    let line = eventually(Duration::from_secs(10), || {
        d.log_text()
            .lines()
            .find(|l| {
                (l.contains("container started") && l.contains(&id))
                    || (l.contains("refused") && l.contains(&format!("pid={} ", w.pid())))
            })
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no decision on {id}:\n{}", d.log_text()));
    if line.contains("container started") {
        let ours = cgroup_of(std::process::id() as i32, "memory").expect("this test's cgroup");
        let cg = line.split("cgroup=").nth(1).unwrap_or_default();
        assert!(
            ours == "/" || cg.starts_with(&format!("{}/", ours.trim_end_matches('/'))),
            "the container's cgroup {cg} is not inside its launcher's {ours}"
        );
    } else {
        assert!(line.contains("reason=vanished"), "{line}");
    }
    w.go();
    w.wait();
}

#[test]
fn past_the_descriptor_budget_launchers_are_refused_counted_and_metrics_answer() {
    use std::os::unix::fs::PermissionsExt as _;
    // A descriptor limit of 256, so that the budget (half of it here) runs out at about a
    // hundred containers; the daemon raises its soft limit to this hard one.
    let dir = tempfile::tempdir().unwrap();
    let limited = dir.path().join("apptheus-limited");
    std::fs::write(
        &limited,
        format!(
            "#!/bin/sh\nulimit -n 256 || exit 99\nexec {} \"$@\"\n",
            bin("apptheus").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&limited, std::fs::Permissions::from_mode(0o755)).unwrap();
    let trust = format!("--trust.path={}", bin("apptheus-exec").display());
    let d = Daemon::start_exe(
        &limited,
        &[&trust, "--monitor.interval=100ms"],
        &[],
        common::Client::plain(),
    );
    let budget = eventually(Duration::from_secs(10), || {
        sample(&d.metrics(), "apptheus_descriptors_budget", "")
    })
    .expect("apptheus_descriptors_budget") as usize;
    assert_eq!(budget, 128, "half of the limit of 256");
    let refused = |m: &str| {
        sample(
            m,
            "apptheus_gateway_rejections_total",
            "reason=\"descriptors\"",
        )
        .unwrap_or(-1.0)
    };
    // The last place is never taken: a launcher being admitted holds its pidfd besides its
    // connection.
    let (admitted, refused_n) = (budget - 1, 6.0);
    let mut ws: Vec<_> = (0..budget + 5)
        .map(|_| d.exec_workload(&["ready", "wait"]))
        .collect();
    ws.iter_mut().for_each(|w| w.ready());
    let m = eventually(Duration::from_secs(20), || {
        let m = d.metrics();
        (sample(&m, "apptheus_containers", "") == Some(admitted as f64) && refused(&m) == refused_n)
            .then_some(m)
    })
    .unwrap_or_else(|| {
        let m = d.metrics();
        let log = std::fs::read_to_string(&d.log).unwrap_or_default();
        let problems: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(10)
            .collect();
        panic!(
            "{admitted} admitted and {refused_n} refused for descriptors; containers {:?}, refused {}; rejections: {:?}; the daemon's warnings: {problems:#?}",
            sample(&m, "apptheus_containers", ""),
            refused(&m),
            m.lines()
                .filter(|l| l.starts_with("apptheus_gateway_rejections_total"))
                .collect::<Vec<_>>()
        )
    });
    let held = |m: &str, by: &str| {
        sample(m, "apptheus_descriptors_held", &format!("by=\"{by}\"")).unwrap_or(-1.0)
    };
    // Every connection holds its place (the gauges are set at each pass); the probes gave
    // theirs up but for what is left.
    let m = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        (held(&m, "containers") == admitted as f64).then_some(m)
    })
    .unwrap_or(m);
    assert_eq!(held(&m, "containers"), admitted as f64);
    assert!(held(&m, "probes") <= (budget - admitted) as f64, "{m}");
    // Nothing else was refused, and the daemon's own descriptors were never short.
    assert!(
        !std::fs::read_to_string(&d.log)
            .unwrap()
            .contains("Too many open files")
    );
    // Ten end: their places go to newcomers, which are admitted.
    for mut w in ws.drain(..10) {
        w.go();
        assert!(w.wait().success());
    }
    eventually(Duration::from_secs(20), || {
        (held(&d.metrics(), "containers") <= (admitted - 10) as f64).then_some(())
    })
    .expect("the ended containers' connections are given back");
    let mut late: Vec<_> = (0..5)
        .map(|_| d.exec_workload(&["ready", "wait"]))
        .collect();
    late.iter_mut().for_each(|w| w.ready());
    let m = eventually(Duration::from_secs(20), || {
        let m = d.metrics();
        late.iter()
            .all(|w| m.contains(&exec_label(w.pid())))
            .then_some(m)
    })
    .expect("newcomers admitted once connections were given back");
    assert_eq!(refused(&m), refused_n);
    for mut w in ws.into_iter().chain(late) {
        w.go();
        assert!(w.wait().success());
    }
}
