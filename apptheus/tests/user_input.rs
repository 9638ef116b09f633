//! Root acting on what a user controls: a path a launcher's environment names (a terminal
//! reached through the user's own mount namespace), the size and shape of its environment, and
//! the names of the cgroups a user makes. Each attack is run as an unprivileged user the test
//! makes up (a uid of its own, through setpriv), against a real daemon started as systemd
//! starts it (a session of its own, no terminal).
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{Daemon, Workload, bin, eventually, workload_bin};

/// The daemon's socket directory opened to other users (the daemon's own is `/run/apptheus`,
/// 0755).
fn open_socket_dir(d: &Daemon) {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `setpriv` to `uid` (and gid `uid`, no groups), then `args`.
fn as_user(uid: u32, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        "--",
    ])
    .args(args);
    c
}

/// Field 7 of /proc/<pid>/stat: the controlling terminal's device number (0: none).
fn tty_nr(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(4).unwrap().parse().unwrap()
}

#[test]
fn a_terminal_a_user_names_never_becomes_the_daemons() {
    let mut d = Daemon::start(&["--monitor.interval=100ms"]);
    open_socket_dir(&d);
    let uid = 64_031;
    // A terminal of the user's: they hold its master side (here, the test does), its slave is
    // theirs.
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = nix::unistd::ttyname(&pty.slave).unwrap();
    nix::unistd::chown(
        &slave,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .unwrap();
    drop(pty.slave);
    // In a user and mount namespace of their own, the terminal is bind-mounted onto a
    // `.job.ad`, and `_CONDOR_JOB_AD` names it through /proc/<pid>/root.
    let exec = bin("apptheus-exec");
    let socket = d.socket.display().to_string();
    let launcher = |setup: &str| {
        let script = format!(
            "mount -t tmpfs none /mnt && {setup} && exec env _CONDOR_JOB_AD=/proc/$$/root/mnt/.job.ad {} --socket={socket} -- sleep 600",
            exec.display()
        );
        Workload::spawn_cmd(&mut as_user(uid, &["unshare", "-Urm", "sh", "-c", &script]))
    };
    let terminal = launcher(&format!(
        "touch /mnt/.job.ad && mount --bind {} /mnt/.job.ad",
        slave.display()
    ));
    d.wait_log(
        0,
        &[
            "container started",
            &format!("apptheus-exec_{}", terminal.pid()),
        ],
    );
    assert_eq!(
        tty_nr(d.child.id()),
        0,
        "the daemon took the user's terminal as its own:\n{}",
        d.log_text()
    );
    // What the user types there: ^C, ^\, ^Z.
    nix::unistd::write(&pty.master, b"\x03\x1c\x1a").unwrap();
    // A job ad that is a plain file of the user's, in the same place, is still read (as the
    // user).
    let ad = launcher("printf 'ClusterId = 77\\nProcId = 3\\n' > /mnt/.job.ad");
    let label = format!("container=\"apptheus-exec_{}\"", ad.pid());
    let m = d.metrics_showing(&label);
    let job = m
        .lines()
        .find(|l| l.starts_with("apptheus_container_job_info{") && l.contains(&label))
        .unwrap_or_else(|| panic!("no job_info for {label}:\n{m}"));
    assert!(
        job.contains("scheduler=\"htcondor\"") && job.contains("job_id=\"77.3\""),
        "{job}"
    );
    assert!(!d.exited(), "the daemon stopped:\n{}", d.log_text());
    assert!(!d.log_text().contains("shutting down"), "{}", d.log_text());
    drop((terminal, ad));
}

#[test]
fn terminal_signals_are_logged_and_only_roots_stop_the_daemon() {
    let mut d = Daemon::start(&[]);
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    // A hang-up, ^\ and ^Z's signals, sent by root, are not a stop.
    for s in [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGQUIT,
        nix::sys::signal::Signal::SIGTSTP,
    ] {
        nix::sys::signal::kill(pid, s).unwrap();
        d.wait_log(0, &["signal ignored", s.as_str()]);
    }
    assert!(!d.exited(), "{}", d.log_text());
    assert_eq!(d.get("/-/ready").0, 200);
    // SIGTERM from root stops it cleanly.
    assert!(d.stop().success(), "{}", d.log_text());
}

/// Peak resident memory of `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn environments_of_tiny_entries_cost_bounded_memory() {
    let d = Daemon::start_with_trust(&[
        &format!("--trust.path={}", workload_bin().display()),
        "--monitor.interval=100ms",
    ]);
    open_socket_dir(&d);
    // Each launcher starts with about 1 MiB of environment (eight values of 127 KiB, the
    // kernel's longest), rewrites it into `a=` entries, and forks 7 children that share it:
    // 8 environments of ~350,000 entries each, four launchers admitted at once.
    let value = "x".repeat(127 << 10);
    let connect = format!("connect:{}", d.socket.display());
    let mut launchers: Vec<Workload> = (0..4)
        .map(|i| {
            let mut steps = vec!["env-bomb"];
            steps.extend(["sleeper"; 7]);
            steps.extend(["ready", "wait", &connect, "ready", "wait"]);
            let mut cmd = as_user(64_032 + i, &[workload_bin().to_str().unwrap()]);
            cmd.args(&steps);
            for k in 0..8 {
                cmd.env(format!("BIG{k}"), &value);
            }
            let mut w = Workload::spawn_cmd(&mut cmd);
            let bombed = w.line();
            assert!(bombed.starts_with("env-bomb "), "{bombed}");
            w
        })
        .collect();
    for w in &mut launchers {
        for _ in 0..7 {
            let l = w.line();
            assert!(l.starts_with("sleeper "), "{l}");
        }
        w.ready();
    }
    // Peak RSS counted from here.
    std::fs::write(format!("/proc/{}/clear_refs", d.child.id()), "5").unwrap();
    let before = peak_rss(d.child.id());
    for w in &mut launchers {
        w.go();
    }
    for w in &mut launchers {
        w.ready();
        d.wait_log(0, &["container started", &format!("workload_{}", w.pid())]);
    }
    let grown = peak_rss(d.child.id()).saturating_sub(before);
    println!(
        "peak RSS grew by {:.1} MiB over four admissions",
        grown as f64 / (1 << 20) as f64
    );
    assert!(
        grown < 16 << 20,
        "peak RSS grew by {grown} bytes reading four launchers' environments"
    );
}

/// A cgroup of the user's, in the daemon's primary hierarchy; removed with what it holds.
struct Delegated(PathBuf);

impl Drop for Delegated {
    fn drop(&mut self) {
        let _ = eventually(Duration::from_secs(10), || {
            common::remove_cgroup_tree(&self.0);
            (!self.0.exists()).then_some(())
        });
    }
}

#[test]
fn long_cgroup_names_cannot_push_the_state_file_past_its_bound() {
    let root = if Path::new("/sys/fs/cgroup/memory/memory.stat").exists() {
        PathBuf::from("/sys/fs/cgroup/memory")
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    let uid = 64_036;
    let base = Delegated(root.join(common::unique("apptheus-test-names")));
    std::fs::create_dir(&base.0).unwrap();
    for f in ["", "cgroup.procs"] {
        nix::unistd::chown(&base.0.join(f), Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
    }
    let mut d = Daemon::start(&["--monitor.interval=100ms"]);
    open_socket_dir(&d);
    // A job of another user's, whose identity must survive a restart.
    let mut job = d.exec_workload_env(&["ready", "wait"], &[("SLURM_JOB_ID", "4242")]);
    job.ready();
    let job_label = format!("container=\"apptheus-exec_{}\"", job.pid());
    d.metrics_showing(&job_label);
    // The user nests directories named with control bytes (each escaped six-fold in JSON), moves
    // themself in, and starts a launcher there.
    let script = r#"
import os, sys
d = sys.argv[1]
for i in range(12):
    d = os.path.join(d, "\x1b[31m" + "\x01" * 240)
    os.mkdir(d)
with open(os.path.join(d, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
os.execv(sys.argv[2], [sys.argv[2], "--socket=" + sys.argv[3], "--", "sleep", "600"])
"#;
    // Root puts the user's process in their cgroup (as a batch system or systemd would), then
    // it is theirs.
    let user = as_user(
        uid,
        &[
            // Debian's (root's PATH may name a python under /root).
            "/usr/bin/python3",
            "-c",
            script,
            base.0.to_str().unwrap(),
            bin("apptheus-exec").to_str().unwrap(),
            d.socket.to_str().unwrap(),
        ],
    );
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
            base.0.display()
        ))
        .arg(user.get_program())
        .args(user.get_args());
    let nested = Workload::spawn_cmd(&mut shell);
    let refused = d.wait_log(0, &["refused", &format!("pid={}", nested.pid())]);
    assert!(refused.contains("cgroup"), "{refused}");
    let state = d.state_dir().join("containers.json");
    let size = std::fs::metadata(&state).unwrap().len();
    assert!(size < 64 << 10, "state file of {size} bytes");
    // A crash and a restart: the other user's job keeps its identity, nothing is set aside.
    d.kill9();
    d.respawn();
    let m = d.metrics_showing(&job_label);
    assert!(
        m.lines()
            .any(|l| l.starts_with("apptheus_container_job_info{")
                && l.contains(&job_label)
                && l.contains("job_id=\"4242\"")),
        "the job id was lost at the restart:\n{m}"
    );
    let aside: Vec<_> = std::fs::read_dir(d.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert!(
        aside.is_empty(),
        "the state file was set aside:\n{}",
        d.log_text()
    );
    drop((nested, job));
    drop(d);
    drop(base);
}
