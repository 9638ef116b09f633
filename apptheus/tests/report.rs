//! What a batch user is told: `apptheus-exec --report`, `apptheus-report` and `apptheus-top`
//! through the query socket, against ground truth.
//!
//! Each job runs `apptheus-exec --report` in a job cgroup of its own (the exclusive leaf: the
//! container's cgroup is the job's, with the job's limits): a CPU loop of a known CPU time with
//! 2 CPUs allowed, an allocation of a known size under a 1 GiB limit, the same in a 64 MiB job
//! (OOM-killed), an idle sleep. Two users made by the test each see their own containers and
//! nothing of the other's.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{Daemon, bin, cgroups::TestCgroup, users::TestUser, workload_bin};
use serde_json::Value;

/// Every hierarchy the daemon reads: on a pure v2 machine all of these are the one tree.
const JOB_CONTROLLERS: [&str; 6] = ["memory", "cpuacct", "cpu", "pids", "blkio", ""];
const MIB: f64 = 1024.0 * 1024.0;

/// `apptheus-exec --report -- workload steps...` in a job cgroup of its own limited by `setup`:
/// its output, the report on its stderr, and the wall time the test measured.
fn job(d: &Daemon, setup: impl FnOnce(&TestCgroup), steps: &[&str]) -> (Output, Duration) {
    job_env(d, setup, steps, &[])
}

/// As `job`, with `env` in the launcher's environment.
fn job_env(
    d: &Daemon,
    setup: impl FnOnce(&TestCgroup),
    steps: &[&str],
    env: &[(&str, &str)],
) -> (Output, Duration) {
    let job = TestCgroup::new("apptheus-rjob", &JOB_CONTROLLERS);
    setup(&job);
    let script = format!(
        "{}exec {} --socket={} --query-socket={} --report -- {} {}",
        job.enter_script(),
        bin("apptheus-exec").display(),
        d.socket.display(),
        d.query.display(),
        workload_bin().display(),
        steps.join(" ")
    );
    let start = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &script])
        // The report is plain text off a terminal; NO_COLOR set or not.
        .env_remove("APPTHEUS_REPORT")
        .envs(env.iter().copied())
        .output()
        .expect("run apptheus-exec");
    (out, start.elapsed())
}

/// The report's container id (its first line's first word).
fn container_of(report: &str) -> String {
    report
        .lines()
        .find(|l| l.starts_with("apptheus-exec_"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no report on stderr:\n{report}"))
        .to_string()
}

/// `apptheus-report --json ARGS...` as root: its figures.
fn figures(d: &Daemon, args: &[&str]) -> Value {
    let out = Command::new(bin("apptheus-report"))
        .arg(format!("--socket={}", d.query.display()))
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["containers"][0].clone()
}

fn kinds(f: &Value) -> Vec<String> {
    f["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_report_matches_ground_truth_and_says_what_to_change() {
    let summaries = std::env::temp_dir().join(common::unique("apptheus-rsummaries"));
    let file = format!("--container.summary-file={}", summaries.display());
    let d = Daemon::start(&[
        "--monitor.interval=200ms",
        "--container.retention=5m",
        &file,
    ]);
    // The first two are steps of one batch job (named from the environment here).
    let job_id = [("SLURM_JOB_ID", "4242")];

    // 2 s of CPU time in one thread, 2 CPUs allowed (a quota of 2, or the host's 2).
    let (out, wall) = job_env(&d, |j| j.limit_cpu(200_000), &["burn:2"], &job_id);
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{report}");
    let id = container_of(&report);
    let f = figures(&d, &[&id]);
    let cpu = f["cpu_seconds"].as_f64().unwrap();
    let allowed = f["cpus_allowed"].as_f64().unwrap();
    let efficiency = f["cpu_efficiency"].as_f64().unwrap();
    // The loop burns 2 s of its own CPU time; the job's cgroup also counts the start of the
    // shell, apptheus-exec and the (debug) workload: tenths of a second.
    assert!((2.0..2.6).contains(&cpu), "CPU {cpu} s:\n{report}");
    assert_eq!(allowed, 2.0, "{f}");
    // Ground truth: its CPU time over the wall time this test saw (an upper bound of the
    // container's) and the 2 CPUs; one thread can use one of them at most. A loaded machine
    // makes both lower than 0.5 (the CPU waited for: the report's pressure line).
    let truth = cpu / (wall.as_secs_f64() * allowed);
    assert!(
        efficiency >= truth - 0.05 && efficiency <= 0.55,
        "efficiency {efficiency} against {truth:.3} (wall {wall:?}):\n{report}"
    );
    assert!(kinds(&f).contains(&"low_cpu_efficiency".into()), "{f}");
    assert!(
        report.contains("of 2 CPUs allowed") && report.contains("ask for 1"),
        "{report}"
    );
    println!("CPU: {cpu:.3} s, efficiency {efficiency} (ground truth >= {truth:.3})\n{report}");

    // 200 MiB under a 1 GiB job limit, held a moment (a job shorter than a second gets no
    // efficiency notes).
    let (out, _) = job_env(
        &d,
        |j| j.limit_memory(1 << 30),
        &["alloc:200", "sleep:1.5"],
        &job_id,
    );
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{report}");
    let f = figures(&d, &[&container_of(&report)]);
    let peak = f["memory_peak_bytes"].as_f64().unwrap();
    assert!(
        (200.0 * MIB..=210.0 * MIB).contains(&peak),
        "peak {} MiB:\n{report}",
        peak / MIB
    );
    assert_eq!(f["memory_limit_bytes"].as_f64(), Some(1024.0 * MIB));
    let note = f["notes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "memory_far_below_limit")
        .unwrap_or_else(|| panic!("no memory note: {f}"));
    let text = note["text"].as_str().unwrap();
    // "... ask for 256 MiB (e.g. --mem=256M)": at least the peak.
    let suggested: f64 = text
        .split("--mem=")
        .nth(1)
        .and_then(|s| s.strip_suffix("M)"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no --mem= in {text}"));
    assert!(suggested * MIB >= peak, "{text}");
    println!("memory: peak {:.1} MiB, {text}", peak / MIB);

    // 200 MiB in a 64 MiB job: killed, and told why.
    let (out, _) = job(&d, |j| j.limit_memory(64 << 20), &["alloc:200"]);
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(137), "{report}");
    assert!(
        report.contains("killed by the kernel for lack of memory")
            && report.contains("peak reached the 64.0 MiB limit"),
        "{report}"
    );
    println!("OOM:\n{report}");

    // An idle sleep: no CPU all its life but its start (a threshold of 2 s, a flag of
    // apptheus-report).
    let (out, _) = job(&d, |_| {}, &["sleep:6"]);
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    let id = container_of(&report);
    let f = figures(&d, &["--note.idle-after=2s", &id]);
    assert!(kinds(&f).contains(&"idle".into()), "{f}");
    println!("idle: {}", f["notes"]);

    // The administrator's view of job 4242 from the summary file: its two containers and
    // their total.
    let records = common::eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&summaries).ok()?;
        (text.lines().count() >= 4).then_some(())
    });
    assert!(records.is_some(), "the summary file has not every record");
    let from = format!("--from={}", summaries.display());
    let out = Command::new(bin("apptheus-report"))
        .args([&from, "--job", "4242", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["job"]["containers"], 2, "{v}");
    let total = v["job"]["cpu_seconds"].as_f64().unwrap();
    let each: f64 = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cpu_seconds"].as_f64().unwrap())
        .sum();
    assert!((total - each).abs() < 1e-6 && total >= cpu, "{v}");
    let text = Command::new(bin("apptheus-report"))
        .args([&from, "--job", "4242"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("Job 4242: 2 containers on this node"),
        "{text}"
    );
    println!("{text}");

    // The same job as jobstats keeps it in Slurm's AdminComment, read back through jobstats'
    // documented pipeline.
    let pipeline = format!(
        "{} {from} --job 4242 --jobstats --node node-a | sed 's/JS1://' | tr -d ' ' | base64 -d | gzip -d",
        bin("apptheus-report").display()
    );
    let out = Command::new("sh").args(["-c", &pipeline]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let js: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    println!("JS1 record: {js}");
    let node = &js["nodes"]["node-a"];
    assert_eq!(js["nodes"].as_object().unwrap().len(), 1, "{js}");
    assert_eq!(js["gpus"], 0, "{js}");
    // CPU seconds to the millisecond.
    let time = node["total_time"].as_f64().unwrap();
    assert!(
        (time - total).abs() <= 0.0005 + total * 0.02,
        "{time} vs {total}: {js}"
    );
    assert_eq!(node["cpus"], 2, "{js}");
    assert_eq!(node["total_memory"].as_f64(), Some(1024.0 * MIB), "{js}");
    let used = node["used_memory"].as_f64().unwrap();
    assert!((used - peak).abs() <= peak * 0.05, "{used} vs {peak}: {js}");
    // The job's run time: from its first container's start to its last one's end.
    let run = js["total_time"].as_u64().unwrap();
    assert!((3..=30).contains(&run), "{js}");
    let _ = std::fs::remove_file(&summaries);
}

/// Two users each see their own containers through the query socket (`apptheus-top --once`,
/// `apptheus-report`), root sees both, and another user's container is answered as one that
/// does not exist.
#[test]
fn each_user_is_shown_their_own() {
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let (alice, bob) = (TestUser::new("ra"), TestUser::new("rb"));
    let (mut wa, a) = alice.launch(&d, &["wait"]);
    let (mut wb, b) = bob.launch(&d, &["wait"]);
    let query = format!("--socket={}", d.query.display());
    let run = |user: Option<&TestUser>, program: &str, args: &[&str]| -> (i32, String) {
        let mut cmd = match user {
            Some(u) => u.command(&bin(program)),
            None => Command::new(bin(program)),
        };
        let out = cmd.arg(&query).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for (user, own, other) in [(&alice, &a, &b), (&bob, &b, &a)] {
        let (code, top) = run(Some(user), "apptheus-top", &["--once"]);
        assert_eq!(code, 0, "{top}");
        assert!(
            top.contains(own.as_str()) && !top.contains(other.as_str()),
            "{top}"
        );
        let (code, report) = run(Some(user), "apptheus-report", &[]);
        assert_eq!(code, 0, "{report}");
        assert!(
            report.contains(own.as_str()) && !report.contains(other.as_str()),
            "{report}"
        );
        // Another's container and one that never was: the same answer.
        let (code, theirs) = run(Some(user), "apptheus-report", &[other]);
        let (code2, none) = run(Some(user), "apptheus-report", &["apptheus-exec_1"]);
        assert_eq!((code, code2), (1, 1));
        assert_eq!(
            theirs.replace(other.as_str(), "ID"),
            none.replace("apptheus-exec_1", "ID")
        );
    }
    let (code, top) = run(None, "apptheus-top", &["--once"]);
    assert_eq!(code, 0, "{top}");
    assert!(
        top.contains(a.as_str()) && top.contains(b.as_str()),
        "{top}"
    );
    wa.go();
    wb.go();
    assert!(wa.wait().success() && wb.wait().success());
}
