//! `apptheus-exec` connects first and leaves last (the launcher protocol's `ok` and `end`).
//!
//! Its child connects, waits for the daemon's `ok` and only then execs CMD: CMD starts in the
//! container's cgroup, in every placement, and its forks, execs and pages count from its first
//! instruction. Its parent waits for `end`, sent once the daemon has let go of the container's
//! cgroup: when it exits, the container's directory is already gone. Without a daemon, or
//! refused, CMD runs with one warning; a launcher that never reads is admitted as before.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Daemon, Workload, bin, cgroup_of,
    cgroups::{self, TestCgroup},
    eventually, sample, unique, workload_bin,
};
use serde_json::Value;

/// Every hierarchy the daemon reads: on a pure v2 machine all of these are the one tree.
const JOB_CONTROLLERS: [&str; 5] = ["memory", "cpuacct", "pids", "blkio", ""];
/// The command whose process events are counted: a shell that forks two children at once,
/// each of which execs /bin/true. It prints its pid first (a builtin: no process event).
const FORKER: &str = "echo $$; /bin/true & /bin/true & wait";

/// Where the container of an apptheus-exec run is made.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Placement {
    /// nested, the job's leaf holds nothing but the launcher: the leaf is the container's.
    Exclusive,
    /// nested, the job's leaf also holds a foreign process: `<leaf>/<parent>/<id>`.
    Shared,
    /// `--cgroup.placement=dedicated`: `/<parent>/<id>`.
    Dedicated,
}

/// A daemon and a job cgroup (with a foreign process in it for `Shared`) to run
/// `apptheus-exec` in.
struct Setup {
    placement: Placement,
    d: Daemon,
    job: TestCgroup,
    foreign: Option<Workload>,
    summaries: std::path::PathBuf,
}

impl Setup {
    fn new(placement: Placement) -> Setup {
        let job = TestCgroup::new("apptheus-xjob", &JOB_CONTROLLERS);
        let foreign = (placement == Placement::Shared).then(|| {
            let w = Workload::spawn_cmd(
                Command::new("sh").args(["-c", &format!("{}exec sleep 600", job.enter_script())]),
            );
            let dir = job.dir("memory");
            eventually(Duration::from_secs(10), || {
                cgroups::procs(&dir).contains(&w.pid()).then_some(())
            })
            .expect("the foreign process never entered the job's cgroup");
            w
        });
        let summaries = std::env::temp_dir().join(unique("apptheus-xsummaries"));
        let file = format!("--container.summary-file={}", summaries.display());
        let mut args = vec![
            "--monitor.interval=200ms",
            "--gateway.admission-rate-per-user=1000",
            file.as_str(),
        ];
        if placement == Placement::Dedicated {
            args.push("--cgroup.placement=dedicated");
        }
        Setup {
            placement,
            d: Daemon::start(&args),
            job,
            foreign,
            summaries,
        }
    }

    /// `apptheus-exec -- cmd...` started inside the job's cgroup, stdio piped.
    fn exec(&self, cmd: &[&str]) -> Workload {
        let quoted: Vec<String> = cmd
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        let script = format!(
            "{}exec {} --socket={} -- {}",
            self.job.enter_script(),
            bin("apptheus-exec").display(),
            self.d.socket.display(),
            quoted.join(" ")
        );
        Workload::spawn_cmd(Command::new("sh").args(["-c", &script]))
    }

    /// The cgroup path the container of launcher `pid` must have.
    fn expected(&self, pid: i32) -> String {
        let id = format!("apptheus-exec_{pid}");
        match self.placement {
            Placement::Exclusive => self.job.rel(),
            Placement::Shared => format!("{}/{}/{id}", self.job.rel(), self.d.parent),
            Placement::Dedicated => format!("/{}/{id}", self.d.parent),
        }
    }

    /// The summary record of container `id`, waiting for it.
    fn summary(&self, id: &str) -> Value {
        eventually(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&self.summaries).ok()?;
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["container"] == id)
        })
        .unwrap_or_else(|| panic!("no summary of {id}:\n{}", self.d.log_text()))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(f) = &mut self.foreign {
            let _ = f.child.kill();
            let _ = f.child.wait();
        }
        let _ = std::fs::remove_file(&self.summaries);
    }
}

/// The cgroup a line of /proc/<pid>/cgroup gives for the hierarchy the container's `cgroup`
/// label is in (the v1 memory hierarchy where there is one, else the unified tree).
fn primary_of(proc_cgroup: &str) -> Option<String> {
    let v1_memory = !cgroups::is_v2("memory");
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = if v1_memory {
            controllers.split(',').any(|c| c == "memory")
        } else {
            controllers.is_empty()
        };
        wanted.then(|| path.to_string())
    })
}

/// CMD reads its own cgroup as its first act: it is already the container's, in each
/// placement, and the parent apptheus-exec is not in a cgroup the daemon made.
#[test]
fn cmd_starts_inside_the_containers_cgroup() {
    for placement in [
        Placement::Exclusive,
        Placement::Shared,
        Placement::Dedicated,
    ] {
        let s = Setup::new(placement);
        let mut w = s.exec(&[
            "sh",
            "-c",
            "echo $$; cat /proc/self/cgroup; echo end; read x",
        ]);
        let pid: i32 = w.line().parse().unwrap();
        let mut own = String::new();
        loop {
            let l = w.line();
            if l == "end" {
                break;
            }
            own.push_str(&l);
            own.push('\n');
        }
        assert_eq!(
            w.pid(),
            pid,
            "CMD is apptheus-exec's child, the container's launcher"
        );
        let want = s.expected(pid);
        assert_eq!(
            primary_of(&own).as_deref(),
            Some(want.as_str()),
            "{placement:?}: CMD's first cgroup is not the container's:\n{own}"
        );
        let label = format!("container=\"apptheus-exec_{pid}\"");
        let m = s.d.metrics_showing(&label);
        let info = m
            .lines()
            .find(|l| l.starts_with("apptheus_container_info{") && l.contains(&label))
            .unwrap();
        assert!(info.contains(&format!("cgroup=\"{want}\"")), "{info}");
        // The parent stays where it was started: the job's cgroup.
        assert_eq!(
            cgroup_of(w.exec_pid(), "memory").as_deref(),
            Some(s.job.rel().as_str())
        );
        w.go();
        assert!(w.wait().success());
        println!("{placement:?}: CMD started in {want}");
    }
}

/// Process events counted by `strace -f -e trace=process` for `sh -c FORKER`: the clones,
/// forks and vforks that made a process (not a thread) and succeeded, and the successful
/// execve calls, sh's own included (strace runs it by an execve, as apptheus-exec's child
/// runs CMD).
fn strace_counts() -> ((u64, u64), String) {
    let out = std::env::temp_dir().join(unique("apptheus-xstrace"));
    let st = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=process", "-o"])
        .arg(&out)
        .args(["sh", "-c", FORKER])
        .stdout(Stdio::null())
        .status()
        .expect("strace is missing: cargo xtask setup --test installs it");
    assert!(st.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    // A call cut by another's line comes back as "<... NAME resumed>": its name and flags
    // are on its first line, kept per pid.
    let mut pending: std::collections::HashMap<String, String> = Default::default();
    let (mut forks, mut execs) = (0, 0);
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let call = if let Some(r) = rest.strip_prefix("<... ") {
            let name = r.split_whitespace().next().unwrap_or_default();
            let head = pending.remove(pid).unwrap_or_default();
            format!("{head} {name}({r}")
        } else if rest.ends_with("<unfinished ...>") {
            pending.insert(pid.to_string(), rest.to_string());
            continue;
        } else {
            rest.to_string()
        };
        let result = call.rsplit_once("= ").map(|(_, r)| r.trim());
        let ok_pid = result.and_then(|r| r.parse::<i64>().ok());
        let name = call.split('(').next().unwrap_or_default().trim();
        let name = name.rsplit(' ').next().unwrap_or_default();
        match name {
            "clone" | "clone3" | "fork" | "vfork"
                if ok_pid.is_some_and(|p| p > 0) && !call.contains("CLONE_THREAD") =>
            {
                forks += 1
            }
            "execve" | "execveat" if ok_pid == Some(0) => execs += 1,
            _ => {}
        }
    }
    ((forks, execs), text)
}

/// Exact counts from the first instruction: for `sh -c FORKER` the container's forks and
/// execs equal what `strace -f` counts for the same command's tree (process-creating clones
/// that succeeded, successful execve; apptheus-exec's child's exec of CMD is CMD's own
/// execve, counted by both, and apptheus-exec's fork of that child by neither: it happens
/// before the connection, and the parent is not a member). 50 runs in a row per placement.
#[test]
fn forks_and_execs_count_from_cmds_first_instruction() {
    const RUNS: usize = 50;
    let (want, trace) = strace_counts();
    assert_eq!(
        want,
        (2, 3),
        "strace's counts of sh -c '{FORKER}':\n{trace}"
    );
    for placement in [
        Placement::Exclusive,
        Placement::Shared,
        Placement::Dedicated,
    ] {
        let s = Setup::new(placement);
        let mut exact = 0;
        for run in 0..RUNS {
            let mut w = s.exec(&["sh", "-c", FORKER]);
            let pid: i32 = w.line().parse().unwrap();
            assert!(w.wait().success());
            let v = s.summary(&format!("apptheus-exec_{pid}"));
            let got = (v["forks"].as_u64().unwrap(), v["execs"].as_u64().unwrap());
            assert_eq!(
                got, want,
                "{placement:?}, run {run}: (forks, execs) {got:?}, strace {want:?}: {v}"
            );
            exact += 1;
        }
        println!(
            "{placement:?}: {exact}/{RUNS} runs with forks and execs exactly strace's {want:?}"
        );
    }
}

/// Memory from the first page: pages CMD touches before anything else are charged to the
/// container's cgroup (neither v1 without move_charge nor v2 moves charges with a process):
/// a `yes` loop and a 200 MiB allocation made before any pause both show in the container.
#[test]
fn memory_counts_from_the_first_page() {
    let s = Setup::new(Placement::Shared);
    let label_of = |pid: i32| format!("container=\"apptheus-exec_{pid}\"");
    let memory = |label: &str, at_least: f64| {
        eventually(Duration::from_secs(20), || {
            sample(
                &s.d.metrics(),
                "apptheus_container_memory_usage_bytes",
                label,
            )
            .filter(|&b| b >= at_least)
        })
        .unwrap_or_else(|| {
            panic!(
                "{label}: memory never reached {at_least} B:\n{}",
                s.d.metrics()
            )
        })
    };

    let mut yes = s.exec(&["sh", "-c", "echo $$; exec yes >/dev/null"]);
    let pid: i32 = yes.line().parse().unwrap();
    let shown = memory(&label_of(pid), 64.0 * 1024.0);
    // Ended by the test: CMD is `yes` (the shell exec'd it); apptheus-exec passes its status on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(yes.wait().code(), Some(137));
    println!("yes: {:.0} KiB in the container", shown / 1024.0);

    let mut alloc = s.exec(&[
        workload_bin().to_str().unwrap(),
        "alloc:200",
        "ready",
        "wait",
    ]);
    assert_eq!(alloc.line(), "alloc ok");
    let l = alloc.line();
    let pid: i32 = l.strip_prefix("ready ").unwrap().parse().unwrap();
    let shown = memory(&label_of(pid), 190.0 * 1024.0 * 1024.0);
    alloc.go();
    assert!(alloc.wait().success());
    println!(
        "alloc:200 first: {:.1} MiB in the container",
        shown / 1048576.0
    );
}

/// `apptheus-exec`'s stderr lines and status for `sh -c 'echo ran; exit 7'`.
fn run_with(socket: &Path) -> (String, Vec<String>, Option<i32>) {
    let out = Command::new(bin("apptheus-exec"))
        .arg(format!("--socket={}", socket.display()))
        .args(["--", "sh", "-c", "echo ran; exit 7"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr.lines().map(str::to_string).collect(),
        out.status.code(),
    )
}

/// No daemon: CMD runs, one warning naming why, CMD's status.
#[test]
fn without_a_daemon_cmd_runs_with_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr, code) = run_with(&dir.path().join("none.sock"));
    assert_eq!(stdout, "ran\n");
    assert_eq!(code, Some(7));
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].contains("cannot reach apptheus") && stderr[0].contains("No such file"),
        "{stderr:?}"
    );
}

/// Refused (not in --trust.path): CMD runs at once, one warning, CMD's status.
#[test]
fn refused_cmd_runs_with_one_warning() {
    let trust = format!("--trust.path={}", workload_bin().display());
    let d = Daemon::start_with_trust(&[trust.as_str()]);
    let (stdout, stderr, code) = run_with(&d.socket);
    assert_eq!(stdout, "ran\n");
    assert_eq!(code, Some(7));
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(stderr[0].contains("refused"), "{stderr:?}");
}

/// A launcher that never reads (Apptainer's starter: the workload's `connect:` step holds a
/// connection and reads nothing) is admitted, measured and ended as before, though the daemon
/// writes `ok` and `end` to it.
#[test]
fn a_launcher_that_never_reads_is_measured_as_before() {
    let trust = format!("--trust.path={}", workload_bin().display());
    let d = Daemon::start_with_trust(&[trust.as_str(), "--monitor.interval=100ms"]);
    let mut w = Workload::spawn(&[
        &format!("connect:{}", d.socket.display()),
        "ready",
        "wait",
        "burn:0.5",
        "forks:2",
        "ready",
        "wait",
    ]);
    w.ready();
    let id = workload_bin()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let label = format!("container=\"{id}_{}\"", w.pid());
    d.metrics_showing(&label);
    w.go();
    w.ready();
    let m = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        (sample(&m, "apptheus_container_cpu_usage_seconds_total", &label)? >= 0.4
            && sample(&m, "apptheus_container_forks_total", &label)? == 2.0)
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("not measured:\n{}", d.metrics()));
    assert!(sample(&m, "apptheus_container_memory_usage_bytes", &label).unwrap() > 0.0);
    w.go();
    assert!(w.wait().success());
    eventually(Duration::from_secs(10), || {
        sample(&d.metrics(), "apptheus_container_end_time_seconds", &label)
    })
    .unwrap_or_else(|| panic!("never ended:\n{}", d.log_text()));
}

/// The launcher waits for the daemon to let go: right after `apptheus-exec` has exited, the
/// container's directories inside the job's (shared) leaf are gone, in every hierarchy: what
/// removes the job's cgroups next (slurmstepd, once) finds them empty.
#[test]
fn the_containers_cgroup_is_gone_when_the_launcher_exits() {
    const RUNS: usize = 20;
    let s = Setup::new(Placement::Shared);
    for run in 0..RUNS {
        let mut w = s.exec(&["sh", "-c", FORKER]);
        let pid: i32 = w.line().parse().unwrap();
        assert!(w.wait().success());
        let rel = s.expected(pid);
        for h in JOB_CONTROLLERS {
            let dir = cgroups::dir_of(h, &rel);
            assert!(
                !dir.exists(),
                "run {run}: {} is still there when apptheus-exec exits:\n{}",
                dir.display(),
                s.d.log_text()
            );
        }
    }
    println!("{RUNS}/{RUNS}: the container's cgroup was gone when apptheus-exec exited");
}
