//! Hostile users on a shared node: a recycled pid never moves another's process, a fork chain
//! cannot stall the daemon, stale parent links adopt nothing, connections do not outlive their
//! container, one user at their limits leaves room for the others, and a planted directory is
//! never taken. Real kernel, real daemon, as root.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use common::{Daemon, Workload, bin, containers_of, eventually, rejections, sample, workload_bin};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A daemon that trusts the workload program itself (so a test decides exactly when its
/// launcher connects: the `connect:` step), plus `apptheus-exec`, with `env`.
fn daemon(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    let trust = format!(
        "--trust.path={};{}",
        workload_bin().display(),
        bin("apptheus-exec").display()
    );
    let mut args = vec![trust.as_str(), "--monitor.interval=100ms"];
    args.extend_from_slice(extra);
    Daemon::start_env(&args, env)
}

fn connect(d: &Daemon) -> String {
    format!("connect:{}", d.socket.display())
}

/// The pid a `sleeper`/`chain` step printed.
fn printed_pid(w: &mut Workload, what: &str) -> i32 {
    let line = w.line();
    line.strip_prefix(&format!("{what} "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected \"{what} <pid>\", got {line:?}"))
}

/// `pids=[..]` as the test hook writes it, containing `pid`.
fn in_pids(pid: i32) -> String {
    format!("{pid}")
}

/// Held by every test of this binary for its whole run: the tests that steer a pid (set the
/// kernel's last pid, then fork) lose it to any process forked meanwhile, and the others fork a
/// lot (launchers by the hundred, a fork chain). In a slow guest, a steering test missed its
/// pid on each of 500 attempts while the others ran beside it: a process forked in between
/// that lives on keeps the pid taken.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The process's cgroups, as /proc lists them.
fn cgroups(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// Kill `pid` and wait until its pid is free (its parent reaps it).
fn kill_and_wait_reaped(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    eventually(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .unwrap_or_else(|| panic!("pid {pid} was not reaped"));
}

/// The foreign process took `victim`'s pid while the daemon was paused before moving it:
/// it must stay where it is.
struct Foreign {
    /// The workload that forked it (with exactly the victim's pid: clone3's set_tid).
    parent: Workload,
    pid: i32,
    cgroups: String,
}

impl Foreign {
    fn take(victim: i32) -> Foreign {
        kill_and_wait_reaped(victim);
        let mut parent = Workload::spawn(&[&format!("sleeper-at:{victim}"), "wait"]);
        let pid = printed_pid(&mut parent, "sleeper");
        assert_eq!(pid, victim);
        let cgroups = cgroups(victim);
        Foreign {
            parent,
            pid,
            cgroups,
        }
    }

    fn assert_not_moved(&self, d: &Daemon, container: &str) {
        let now = cgroups(self.pid);
        assert_eq!(
            now,
            self.cgroups,
            "the process that took a container process's pid was moved:\n{}",
            d.log_text()
        );
        assert!(!now.contains(container), "{now}");
        // Not even for a moment (moved, then put back by the check after the write).
        assert!(
            !d.log_text().contains("put back"),
            "moved, then put back:\n{}",
            d.log_text()
        );
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        // The workload's Drop ends it and the foreign child, by pid.
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = self.parent.child.try_wait();
    }
}

#[test]
fn a_recycled_pid_is_never_moved_at_admission() {
    let _alone = alone();
    let d = daemon(&[], &[("APPTHEUS_TEST_MOVE_DELAY_MS", "3000")]);
    let mut w = Workload::spawn(&["sleeper", &connect(&d), "ready", "wait"]);
    let victim = printed_pid(&mut w, "sleeper");
    w.ready();
    let id = format!("workload_{}", w.pid());
    // Tracked, and about to be moved: now its pid goes to another process.
    d.wait_log(0, &["test hook: pausing", &in_pids(victim)]);
    let foreign = Foreign::take(victim);
    d.wait_log(0, &["container started", &id]);
    foreign.assert_not_moved(&d, &id);
    // The container itself is whole: the launcher was moved in.
    assert!(cgroups(w.pid()).contains(&id), "{}", cgroups(w.pid()));
}

#[test]
fn a_recycled_pid_is_never_moved_after_a_fork_event() {
    let _alone = alone();
    let d = daemon(&[], &[("APPTHEUS_TEST_MOVE_DELAY_MS", "3000")]);
    let mut w = Workload::spawn(&[&connect(&d), "ready", "wait", "sleeper", "wait"]);
    w.ready();
    // While the admission pauses before its moves, the launcher forks: that child must be
    // moved explicitly (its parent is not moved yet), by the event loop.
    d.wait_log(0, &["test hook: pausing", &in_pids(w.pid())]);
    w.go();
    let victim = printed_pid(&mut w, "sleeper");
    d.wait_log(0, &["test hook: pausing", &format!("[{victim}]")]);
    let foreign = Foreign::take(victim);
    d.wait_log(0, &["test hook: resumed", &format!("[{victim}]")]);
    d.wait_log(0, &["members moved", &format!("[{victim}]")]);
    foreign.assert_not_moved(&d, &format!("workload_{}", w.pid()));
}

/// Every hierarchy's root: where a test moves a process out of a container.
fn move_to_roots(pid: i32) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mounts.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = after.split(' ').next().unwrap_or("");
        let point = before.split(' ').nth(4).unwrap_or("");
        let root = before.split(' ').nth(3).unwrap_or("");
        if (fstype == "cgroup" || fstype == "cgroup2") && root == "/" {
            let _ = std::fs::write(Path::new(point).join("cgroup.procs"), pid.to_string());
        }
    }
}

/// A launcher of `d`'s admitted, with a child (the sleeper) in its container: the launcher,
/// the sleeper's pid, the container's id.
fn with_a_sleeper(d: &Daemon) -> (Workload, i32, String) {
    let mut w = Workload::spawn(&["sleeper", &connect(d), "ready", "wait"]);
    let victim = printed_pid(&mut w, "sleeper");
    w.ready();
    let id = format!("workload_{}", w.pid());
    d.wait_log(0, &["container started", &id]);
    eventually(Duration::from_secs(5), || {
        cgroups(victim).contains(&id).then_some(())
    })
    .expect("the sleeper is in the container");
    (w, victim, id)
}

#[test]
fn a_recycled_pid_is_never_moved_at_a_restart() {
    let _alone = alone();
    let mut d = daemon(&[], &[]);
    let (_w, victim, id) = with_a_sleeper(&d);
    d.kill9();
    // The daemon is down: the sleeper leaves the container (its user can do that with a cgroup
    // of theirs); at the restart it comes back, unless its pid is another's by then.
    move_to_roots(victim);
    let from = d.respawn_env(&[("APPTHEUS_TEST_MOVE_DELAY_MS", "3000")]);
    d.wait_log(from, &["test hook: pausing", &format!("[{victim}]")]);
    let foreign = Foreign::take(victim);
    d.wait_ready(from);
    d.wait_log(from, &["container re-adopted", &id]);
    foreign.assert_not_moved(&d, &id);
}

#[test]
fn a_stale_parent_link_adopts_nothing() {
    let _alone = alone();
    let d = daemon(&[], &[]);
    // A foreign process F whose parent X is still there when the daemon reads the host's
    // parent links (any admission refreshes them).
    let mut x = Workload::spawn(&["sleeper", "ready", "wait", "exit:0"]);
    let f = printed_pid(&mut x, "sleeper");
    // F is orphaned below, out of reach of `x`'s cleanup: ended by its pid, whatever happens.
    let _f = Orphan(f);
    x.ready();
    let x_pid = x.pid();
    let mut first = Workload::spawn(&[&connect(&d), "ready", "wait"]);
    first.ready();
    d.wait_log(
        0,
        &["container started", &format!("workload_{}", first.pid())],
    );
    // X exits (F is orphaned), and a launcher's child takes X's pid.
    x.go();
    x.wait();
    // The child is forked with exactly that pid (clone3's set_tid): nothing else that forks on
    // the machine meanwhile can take it first.
    let at = format!("sleeper-at:{x_pid}");
    let mut launcher = Workload::spawn(&["wait", &at, "wait", &connect(&d), "ready", "wait"]);
    launcher.go();
    assert_eq!(printed_pid(&mut launcher, "sleeper"), x_pid);
    launcher.go();
    launcher.ready();
    let id = format!("workload_{}", launcher.pid());
    d.wait_log(0, &["container started", &id]);
    let before = cgroups(f);
    let label = format!("container=\"{id}\"");
    let settled = eventually(Duration::from_secs(30), || {
        let m = d.metrics();
        (sample(&m, "apptheus_container_processes", &label) == Some(2.0)).then_some(())
    });
    // The launcher and its child Y; never F, whose recorded parent pid Y now has.
    assert!(
        settled.is_some(),
        "the container never counted its 2 processes (launcher and Y):\n{}\n{}",
        d.metrics(),
        d.log_text()
    );
    assert!(!cgroups(f).contains(&id), "F was adopted: {}", cgroups(f));
    assert_eq!(cgroups(f), before);
}

/// A process of this test that was orphaned (its new parent reaps it): killed by its pid.
struct Orphan(i32);

impl Drop for Orphan {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_duplicated_connection_is_closed_when_its_container_ends() {
    let _alone = alone();
    let d = daemon(&[], &[]);
    let baseline = fds(d.child.id());
    let mut w = Workload::spawn(&[&connect(&d), "ready", "wait", "exit:0"]);
    w.ready();
    let id = format!("workload_{}", w.pid());
    d.wait_log(0, &["container started", &id]);
    // A copy of the launcher's connection, taken out of it into this test (outside the
    // container), as pidfd_getfd or fd passing would.
    let socket_fd = std::fs::read_dir(format!("/proc/{}/fd", w.pid()))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .expect("the launcher's socket");
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(w.pid()).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let copy =
        rustix::process::pidfd_getfd(&pidfd, socket_fd, rustix::process::PidfdGetfdFlags::empty())
            .unwrap();
    let mut copy = std::os::unix::net::UnixStream::from(copy);
    // The container ends: the daemon closes the connection, so the copy reads end of file.
    w.go();
    assert!(w.wait().success());
    d.wait_log(0, &["container ended", &id]);
    copy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // What the daemon wrote (its `ok` and `end` lines), then end of file.
    let mut said = Vec::new();
    copy.read_to_end(&mut said)
        .expect("the connection outlived its container");
    assert_eq!(
        String::from_utf8_lossy(&said),
        format!("ok {id}\nend {id}\n"),
        "the daemon's lines on the connection"
    );
    let after = eventually(Duration::from_secs(5), || {
        let n = fds(d.child.id());
        (n <= baseline).then_some(n)
    });
    assert!(
        after.is_some(),
        "the daemon's descriptors stay above {baseline}: {}",
        fds(d.child.id())
    );
}

/// `apptheus-exec -- sleep 600` run as `uid` (the daemon's socket directory opened to it).
fn exec_as(d: &Daemon, uid: u32) -> Workload {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Workload::spawn_cmd(
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
            ])
            .arg(bin("apptheus-exec"))
            .arg(format!("--socket={}", d.socket.display()))
            .args(["--", "sleep", "600"]),
    )
}

#[test]
fn one_user_at_the_limits_leaves_room_for_the_others() {
    let _alone = alone();
    let d = daemon(
        &[
            "--gateway.max-containers-per-user=3",
            "--container.max-retained-per-user=2",
            "--gateway.admission-burst-per-user=5",
            "--gateway.admission-rate-per-user=0.01",
        ],
        &[],
    );
    let (greedy, other) = (64_001u32, 64_002u32);
    // Live containers: three, then the fourth is refused.
    let mut live: Vec<Workload> = (0..3).map(|_| exec_as(&d, greedy)).collect();
    eventually(Duration::from_secs(10), || {
        (containers_of(&d.metrics(), greedy) == 3).then_some(())
    })
    .unwrap_or_else(|| panic!("3 containers of {greedy}:\n{}", d.metrics()));
    let mut refused = exec_as(&d, greedy);
    eventually(Duration::from_secs(10), || {
        (rejections(&d.metrics(), "limit") >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("the 4th container was not refused:\n{}", d.log_text()));
    assert!(
        d.log_text()
            .contains("--gateway.max-containers-per-user reached")
    );
    // Another user is still admitted.
    let mut theirs = exec_as(&d, other);
    eventually(Duration::from_secs(10), || {
        (containers_of(&d.metrics(), other) == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the other user was not admitted:\n{}", d.log_text()));
    // Retained: when the three end, two stay (the oldest is forgotten early).
    for w in &mut live {
        let _ = kill(Pid::from_raw(w.pid()), Signal::SIGTERM);
        w.wait();
    }
    eventually(Duration::from_secs(10), || {
        (containers_of(&d.metrics(), greedy) == 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "retained containers of {greedy} not bounded to 2:\n{}",
            d.metrics()
        )
    });
    // Admissions per second: each admission that goes ahead takes one of the burst of 5 (a
    // refusal by count takes none): 3 are spent, two more go, the next is refused by the rate,
    // while the other user's still go through.
    let started = |w: &Workload| format!("container=apptheus-exec_{}", w.pid());
    let mut fifth = exec_as(&d, greedy);
    d.wait_log(0, &["container started", &started(&fifth)]);
    let mut sixth = exec_as(&d, greedy);
    d.wait_log(0, &["container started", &started(&sixth)]);
    let mut seventh = exec_as(&d, greedy);
    d.wait_log(
        0,
        &[
            "--gateway.admission-rate-per-user reached",
            &format!("pid={}", seventh.pid()),
        ],
    );
    let mut second_of_theirs = exec_as(&d, other);
    eventually(Duration::from_secs(10), || {
        (containers_of(&d.metrics(), other) == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the other user was refused:\n{}", d.log_text()));
    for w in [
        &mut refused,
        &mut theirs,
        &mut fifth,
        &mut sixth,
        &mut seventh,
        &mut second_of_theirs,
    ] {
        let _ = kill(Pid::from_raw(w.pid()), Signal::SIGTERM);
        w.wait();
    }
}

#[test]
fn a_fork_chain_stalls_neither_admission_nor_sampling() {
    let _alone = alone();
    let d = daemon(&[], &[]);
    let mut w = Workload::spawn(&["chain", &connect(&d), "ready", "wait"]);
    let chain = printed_pid(&mut w, "chain");
    // The whole chain is ended with its process group, whatever happens below.
    struct Chain(i32);
    impl Drop for Chain {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(-self.0), Signal::SIGKILL);
        }
    }
    let _chain = Chain(chain);
    w.ready();
    let id = format!("workload_{}", w.pid());
    let started = Instant::now();
    d.wait_log(0, &["container started", &id]);
    println!(
        "the chain's launcher admitted after {:?}",
        started.elapsed()
    );
    // Another user's launcher is admitted within a second.
    let t0 = Instant::now();
    let mut other = exec_as(&d, 64_003);
    let other_id = format!("apptheus-exec_{}", other.pid());
    d.wait_log(0, &["container started", &other_id]);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "another launcher took {took:?}"
    );
    // Sampling passes go on at their interval (100 ms): at least 5 in a second.
    let passes = |m: &str| sample(m, "apptheus_sample_duration_seconds_count", "").unwrap_or(0.0);
    let before = passes(&d.metrics());
    let t1 = Instant::now();
    let after = eventually(Duration::from_secs(5), || {
        let n = passes(&d.metrics());
        (n >= before + 5.0).then_some(n)
    })
    .unwrap_or_else(|| panic!("sampling stalled:\n{}", d.log_text()));
    println!(
        "another launcher admitted in {took:?}; {} passes in {:?}",
        after - before,
        t1.elapsed()
    );
    let _ = kill(Pid::from_raw(other.pid()), Signal::SIGTERM);
    other.wait();
}

/// A directory shaped like a container's, made by a user in a cgroup of theirs, planted before
/// the daemon starts.
struct Planted {
    base: PathBuf,
    sleeper: Child,
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        // The sleeper's cgroup empties once it is reaped.
        let _ = eventually(Duration::from_secs(5), || {
            common::remove_cgroup_tree(&self.base);
            (!self.base.exists()).then_some(())
        });
    }
}

#[test]
fn a_planted_directory_is_neither_taken_nor_removed() {
    let _alone = alone();
    // The daemon's primary hierarchy: v1 memory here (a hybrid host), the unified tree on v2.
    let memory = Path::new("/sys/fs/cgroup/memory");
    let root = if memory.join("memory.stat").exists() {
        memory.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    let parent = common::unique("apptheus-test-planted");
    let base = root.join(common::unique("apptheus-test-user"));
    let busy = base.join(&parent).join("starter-suid_4242");
    let idle = base.join(&parent).join("starter-suid_4243");
    for dir in [&busy, &idle] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(busy.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    let planted = Planted {
        base: base.clone(),
        sleeper,
    };
    for dir in [&base, &base.join(&parent), &busy, &idle] {
        nix::unistd::chown(dir, Some(nix::unistd::Uid::from_raw(64_004)), None).unwrap();
    }
    // Times its owner may set: never read as a start time.
    let far = nix::sys::time::TimeSpec::new(i64::MAX / 1_000_000_000 - 1, 0);
    for dir in [&busy, &idle] {
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            dir.as_path(),
            &far,
            &far,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    let mut d = daemon(&[&format!("--cgroup.parent={parent}")], &[]);
    let m = d.metrics();
    assert!(
        !m.contains("starter-suid_424"),
        "a planted directory became a container:\n{m}"
    );
    assert!(d.log_text().contains("left alone"), "{}", d.log_text());
    assert!(
        busy.is_dir() && idle.is_dir(),
        "a planted directory was removed"
    );
    assert!(d.stop().success());
    assert!(busy.is_dir() && idle.is_dir(), "removed at shutdown");
    // Removed by the test (the daemon's Drop removes what is named like its parent, so the
    // planted tree goes first).
    drop(planted);
}

#[test]
fn a_launcher_that_talks_too_much_is_disconnected_and_its_container_lives_on() {
    let _alone = alone();
    // python3 as the trusted launcher (root's, like any installed launcher): it sends what a
    // launcher never sends, then reads until the daemon closes.
    let python = std::fs::canonicalize("/usr/bin/python3").expect("python3 is installed");
    let trust = format!("--trust.path={}", python.display());
    let d = Daemon::start_with_trust(&[&trust, "--monitor.interval=100ms"]);
    let script = format!(
        "import socket,sys\n\
         s=socket.socket(socket.AF_UNIX); s.connect({sock:?})\n\
         try:\n    s.sendall(b'x'*(1<<20))\nexcept OSError: pass\n\
         s.settimeout(10)\n\
         said=b''\n\
         while True:\n    b=s.recv(512)\n    said+=b\n    if not b or len(said)>4096: break\n\
         print('closed' if len(said)<=4096 else 'open', flush=True)\n\
         sys.stdin.readline()\n",
        sock = d.socket.display().to_string()
    );
    let mut w = Workload::spawn_cmd(Command::new(&python).args(["-c", &script]));
    assert_eq!(w.line(), "closed");
    let id = format!("container=\"python3.11_{}\"", w.pid());
    let live = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        sample(&m, "apptheus_container_processes", &id).filter(|&p| p >= 1.0)
    });
    assert!(
        live.is_some(),
        "the container did not live on:\n{}",
        d.metrics()
    );
    w.go();
    w.wait();
}

/// The workload as `uid`, waiting for a line before it connects (a test sees its pid first),
/// then for another before it exits. With `pid`, the launcher is a child with exactly that pid:
/// root forks it there (clone3's set_tid) and it becomes the user before it connects, as if
/// the user had steered a fork onto the pid, without the race of steering.
fn user_launcher(d: &Daemon, uid: u32, pid: Option<i32>) -> Workload {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let at = pid.map(|p| format!("as-pid:{p}"));
    let user = format!("as-user:{uid}");
    Workload::spawn_cmd(Command::new(workload_bin()).args(at.as_slice()).args([
        &user,
        "ready",
        "wait",
        &connect(d),
        "ready",
        "wait",
    ]))
}

#[test]
fn a_recycled_container_id_leaks_no_kernel_map_entry() {
    let _alone = alone();
    // The kernel's maps have room for 2 live and 1 retained containers.
    let d = daemon(
        &[
            "--gateway.max-containers=2",
            "--container.max-retained=1",
            "--container.retention=1h",
        ],
        &[],
    );
    let uid = 64_041;
    // A user's launcher ends (its container is retained), then the user steers a new one
    // onto its pid: the same container id, again and again.
    let mut pid = None;
    for round in 0..4 {
        let mut l = user_launcher(&d, uid, pid);
        let launcher: i32 = l.line().strip_prefix("ready ").unwrap().parse().unwrap();
        if let Some(p) = pid {
            assert_eq!(launcher, p);
        }
        let id = format!("container=workload_{launcher}");
        let from = d.log_text().len();
        l.go();
        l.ready();
        let started = eventually(Duration::from_secs(30), || {
            let log = d.log_text();
            let tail = log.get(from..)?;
            tail.lines()
                .find(|x| {
                    x.contains(&id) && (x.contains("container started") || x.contains("refused"))
                })
                .map(str::to_string)
        });
        assert!(
            started
                .as_deref()
                .is_some_and(|l| l.contains("container started")),
            "round {round}: the user's launcher was not admitted:\n{}",
            d.log_text()
        );
        l.go();
        l.wait();
        d.wait_log(from, &["container ended", &id]);
        kill_and_wait_reaped(launcher);
        pid = Some(launcher);
    }
    // Root's launcher is still admitted.
    let mut root = Workload::spawn(&[&connect(&d), "ready", "wait"]);
    root.ready();
    d.wait_log(
        0,
        &["container started", &format!("workload_{}", root.pid())],
    );
}

#[test]
fn a_recycled_pid_is_never_held_at_a_restart() {
    let _alone = alone();
    let mut d = daemon(&[], &[]);
    let (_w, victim, id) = with_a_sleeper(&d);
    d.kill9();
    // At the restart the daemon lists the container's processes, and before it holds them the
    // sleeper dies and a process outside the container takes its pid.
    let from = d.respawn_env(&[("APPTHEUS_TEST_HOLD_DELAY_MS", "3000")]);
    d.wait_log(
        from,
        &["test hook: pausing", "point=Hold", &format!("{victim}")],
    );
    let foreign = Foreign::take(victim);
    d.wait_ready(from);
    // The launcher alone is the container's: the foreign process is neither tracked nor moved.
    let readopted = d.wait_log(from, &["container re-adopted", &id]);
    assert!(readopted.contains("processes=1"), "{readopted}");
    foreign.assert_not_moved(&d, &id);
}
