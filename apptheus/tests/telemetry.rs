//! How a job ended and what held it back, end to end: the real daemon, real launchers, real
//! cgroups. CPU pressure of busy loops, throttling under a CPU quota, the container summary
//! (log record and file line, field by field against the ended container's series), the
//! summary file's rotation, and collectors that are off: neither read (the kernel's inotify
//! sees no open of their files) nor exported.
//!
//! Every test runs as root on the real kernel and fails (never skips) when the host lacks what
//! it measures, saying what is missing.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, Workload, bin, cgroup_dir_of as dir_of, eventually, mount_of, sample};
use serde_json::Value;

fn exec_id(pid: i32) -> String {
    format!("apptheus-exec_{pid}")
}

fn label(pid: i32) -> String {
    format!("container=\"{}\"", exec_id(pid))
}

/// The CPUs this test (and so the launchers it starts) may run on.
fn cpus() -> usize {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    (0..nix::sched::CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .count()
}

/// The host's online CPUs.
fn online_cpus() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .unwrap()
        .unwrap() as usize
}

/// A launcher that is stopped when dropped, even when the test fails half-way: its command's
/// processes are killed by pid, after which apptheus-exec exits by itself.
struct Launcher(Workload);

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.0.child.try_wait().ok().flatten().is_some() {
            return;
        }
        for p in common::descendants(self.0.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = eventually(Duration::from_secs(5), || {
            self.0.child.try_wait().ok().flatten()
        });
    }
}

/// Waits until the container of launcher `pid` is in /metrics.
fn shown(d: &Daemon, pid: i32) {
    d.metrics_showing(&label(pid));
}

/// A cgroup made by the test with a CFS quota of `quota_us` per 100 ms, for a launcher to start
/// in: on cgroup v1 (and hybrid hosts) in the cpu hierarchy, on a pure v2 host below the root
/// (whose cgroup.subtree_control must enable cpu). The launcher alone in it, the daemon takes
/// it as the container's own cgroup, so the quota is the container's. Removed when dropped.
struct QuotaCgroup(PathBuf);

impl QuotaCgroup {
    fn new(quota_us: u64) -> QuotaCgroup {
        let name = common::unique("apptheus-test-quota");
        if let Some(cpu) = mount_of("cpu") {
            let dir = cpu.join(&name);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            let cg = QuotaCgroup(dir);
            std::fs::write(cg.0.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(cg.0.join("cpu.cfs_quota_us"), quota_us.to_string()).unwrap();
            return cg;
        }
        let root = mount_of("").expect("neither a v1 cpu hierarchy nor a unified tree is mounted");
        let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
        assert!(
            enabled.split_whitespace().any(|c| c == "cpu"),
            "no v1 cpu hierarchy, and the cpu controller is not enabled in {}/cgroup.subtree_control ({enabled:?}): no CPU quota can be set",
            root.display()
        );
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = QuotaCgroup(dir);
        std::fs::write(cg.0.join("cpu.max"), format!("{quota_us} 100000")).unwrap();
        cg
    }

    /// `sh -c` moving itself into the cgroup, then exec'ing apptheus-exec running the workload.
    fn launcher(&self, d: &Daemon, steps: &str) -> Launcher {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} --socket={} -- {} {steps}",
            self.0.display(),
            bin("apptheus-exec").display(),
            d.socket.display(),
            common::workload_bin().display()
        );
        Launcher(Workload::spawn_cmd(
            Command::new("sh").args(["-c", &script]),
        ))
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        let gone = eventually(Duration::from_secs(3), || {
            common::remove_cgroup_tree(&self.0);
            (!self.0.exists()).then_some(())
        });
        if gone.is_none() {
            eprintln!("test cgroup left behind: {}", self.0.display());
        }
    }
}

/// A JSON object's members in the order the text has them (serde_json's own map sorts them).
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Ordered(members))
            }
        }
        d.deserialize_map(Members)
    }
}

/// The lines of a JSON-lines file (none when it does not exist).
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Waits for the summary line of container `id` in `path`.
fn summary_line(path: &Path, id: &str, d: &Daemon) -> Value {
    eventually(Duration::from_secs(10), || {
        json_lines(path).into_iter().find(|v| v["container"] == id)
    })
    .unwrap_or_else(|| {
        panic!(
            "no summary of {id} in {} within 10 s:\n{}",
            path.display(),
            d.log_text()
        )
    })
}

/// The key-value pairs of a logfmt line, values unquoted and unescaped.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("key=value");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = if after.starts_with('"') {
            chars.next();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some('r') => value.push('\r'),
                        Some(other) => value.push(other),
                        None => {}
                    },
                    c => value.push(c),
                }
            }
            end
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            value.push_str(&after[..end]);
            end
        };
        pairs.push((key.to_string(), value));
        rest = after[end..].trim_start();
    }
    pairs
}

/// The `container summary` record of `id` in the daemon's log, as ordered pairs.
fn summary_record(d: &Daemon, id: &str) -> Vec<(String, String)> {
    let needle = format!("msg=\"container summary\" container={id} ");
    eventually(Duration::from_secs(10), || {
        d.log_text()
            .lines()
            .find(|l| l.contains(&needle))
            .map(logfmt)
    })
    .unwrap_or_else(|| {
        panic!(
            "no 'container summary' of {id} in the log:\n{}",
            d.log_text()
        )
    })
}

/// The value of a label in the first line of family `name` for container `id`.
fn label_value(metrics: &str, name: &str, id: &str, label: &str) -> Option<String> {
    let line = metrics.lines().find(|l| {
        l.starts_with(&format!("{name}{{")) && l.contains(&format!("container=\"{id}\""))
    })?;
    let start = line.find(&format!(",{label}=\""))? + label.len() + 3;
    Some(line[start..].split('"').next()?.to_string())
}

// -------------------------------------------------------------------------------------- tests

/// Twice as many busy loops as CPUs for 3 s in one container: its tasks wait for a CPU most of
/// that time, and PSI says so (`waiting` is PSI's "some").
#[test]
fn busy_loops_twice_the_cpus_show_cpu_pressure() {
    let unified = mount_of("").expect(
        "no unified cgroup tree is mounted: PSI is kept per cgroup only there (cgroup v2 or hybrid)",
    );
    assert!(
        unified.join("cpu.pressure").exists() || Path::new("/proc/pressure/cpu").exists(),
        "PSI is off on this kernel (no cpu.pressure): boot with psi=1"
    );
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let loops = 2 * cpus();
    let spin = format!("spin:{loops}:3");
    let mut w = Launcher(d.exec_workload(&["ready", "wait", &spin, "ready", "wait"]));
    w.0.ready();
    shown(&d, w.0.pid());
    let l = label(w.0.pid());
    let before = sample(
        &d.metrics(),
        "apptheus_container_pressure_cpu_waiting_seconds_total",
        &l,
    )
    .unwrap_or_else(|| panic!("no CPU pressure series for {l}:\n{}", d.metrics()));
    let started = Instant::now();
    w.0.go();
    w.0.ready();
    let spun = started.elapsed();
    // The sampler reads the final PSI totals within a pass or two.
    let m = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        let waiting = sample(&m, "apptheus_container_pressure_cpu_waiting_seconds_total", &l)?;
        (waiting - before >= 1.0).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "{loops} busy loops on {} CPUs for {spun:?}: CPU pressure (waiting) grew by less than 1 s:\n{}",
            cpus(),
            d.metrics()
        )
    });
    let get = |name: &str| sample(&m, name, &l);
    let waiting = get("apptheus_container_pressure_cpu_waiting_seconds_total").unwrap() - before;
    println!(
        "{loops} busy loops on {} CPUs for {:.2} s: CPU pressure waiting {waiting:.3} s, stalled {:?} s (total), memory waiting {:?} s, io waiting {:?} s; CPU time {:?} s",
        cpus(),
        spun.as_secs_f64(),
        get("apptheus_container_pressure_cpu_stalled_seconds_total"),
        get("apptheus_container_pressure_memory_waiting_seconds_total"),
        get("apptheus_container_pressure_io_waiting_seconds_total"),
        get("apptheus_container_cpu_usage_seconds_total"),
    );
    w.0.go();
    assert!(w.0.wait().success());
}

/// A container under a CPU quota of 0.1 CPU burns 0.3 s of CPU: about 3 s of 100 ms periods,
/// nearly all throttled. Its summary says it was allowed 0.1 CPU, by the quota.
#[test]
fn a_cpu_quota_shows_throttled_periods() {
    let quota = QuotaCgroup::new(10_000);
    let files = tempfile::tempdir().unwrap();
    let summaries = files.path().join("summary.jsonl");
    let d = Daemon::start(&[
        "--monitor.interval=200ms",
        &format!("--container.summary-file={}", summaries.display()),
    ]);
    let mut w = quota.launcher(&d, "ready wait burn:0.3 ready wait");
    w.0.ready();
    shown(&d, w.0.pid());
    let l = label(w.0.pid());
    let started = Instant::now();
    w.0.go();
    w.0.ready();
    let burned = started.elapsed();
    let m = eventually(Duration::from_secs(5), || {
        let m = d.metrics();
        let throttled = sample(&m, "apptheus_container_cpu_cfs_throttled_periods_total", &l)?;
        (throttled >= 5.0).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "0.3 s of CPU under a 0.1 CPU quota ({burned:?}): fewer than 5 throttled periods:\n{}\n{}",
            d.metrics(),
            d.log_text()
        )
    });
    let get = |name: &str| sample(&m, name, &l).unwrap();
    let periods = get("apptheus_container_cpu_cfs_periods_total");
    let throttled = get("apptheus_container_cpu_cfs_throttled_periods_total");
    let throttled_seconds = get("apptheus_container_cpu_cfs_throttled_seconds_total");
    println!(
        "0.3 s of CPU under a 0.1 CPU quota took {:.2} s: {periods} periods, {throttled} throttled, {throttled_seconds:.3} s throttled",
        burned.as_secs_f64()
    );
    assert!(
        periods >= throttled,
        "{periods} periods < {throttled} throttled"
    );
    assert!(throttled_seconds > 0.0);
    // The allocation as a series, beside the memory limit.
    assert_eq!(get("apptheus_container_spec_cpus"), 0.1);
    assert!(
        m.lines().any(|x| x.starts_with("apptheus_container_info{")
            && x.contains(&l)
            && x.contains("cpus_source=\"quota\"")),
        "{m}"
    );
    w.0.go();
    assert!(w.0.wait().success());
    let s = summary_line(&summaries, &exec_id(w.0.pid()), &d);
    println!("summary: {s}");
    assert_eq!(s["cpus_allowed"], 0.1, "{s}");
    assert_eq!(s["cpus_allowed_source"], "quota", "{s}");
    assert!(
        s["cpu_cfs_throttled_periods"].as_u64().unwrap() >= throttled as u64,
        "{s}"
    );
    // Its CPU time over its life times the 0.1 CPU it was allowed. Near 1 (it burned under its
    // quota most of its life); the kernel enforces a quota in slices, so a little above 1 is
    // possible.
    let efficiency = s["cpu_efficiency"].as_f64().unwrap();
    let expected =
        s["cpu_seconds"].as_f64().unwrap() / (s["duration_seconds"].as_f64().unwrap() * 0.1);
    assert!(
        (efficiency - expected).abs() < 0.005 && efficiency > 0.3,
        "efficiency {efficiency}, expected {expected:.4}: {s}"
    );
}

/// The summary of a container that ran 1 s of CPU and ended: the log record and the file's
/// line are the same record, and each field is the ended container's final series (kept for
/// the retention), its identity, its job, or what the test saw.
#[test]
fn the_summary_of_a_container_that_ran_one_second() {
    let files = tempfile::tempdir().unwrap();
    let summaries = files.path().join("summary.jsonl");
    let d = Daemon::start_env(
        &[
            &format!("--trust.path={}", bin("apptheus-exec").display()),
            "--monitor.interval=200ms",
            &format!("--container.summary-file={}", summaries.display()),
        ],
        &[],
    );
    let mut w = Launcher(Workload::spawn_cmd(
        Command::new(bin("apptheus-exec"))
            .arg(format!("--socket={}", d.socket.display()))
            .arg("--")
            .arg(common::workload_bin())
            .args(["ready", "wait", "burn:1", "alloc:32"])
            .env("SLURM_JOB_ID", "4242")
            .env("SLURM_JOB_ACCOUNT", "proj1")
            .env("SLURM_JOB_PARTITION", "batch")
            .env("APPTAINER_CONTAINER", "/images/test.sif"),
    ));
    let pid = w.0.pid();
    let id = exec_id(pid);
    let before_start = common_unix_now();
    w.0.ready();
    shown(&d, pid);
    w.0.go();
    assert!(w.0.wait().success());
    let exited = common_unix_now();

    let file = summary_line(&summaries, &id, &d);
    let record = summary_record(&d, &id);
    println!("summary file line: {file}");

    // The log record is the file's line: same keys in the same order, same values.
    let text = std::fs::read_to_string(&summaries).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("\"{id}\"")))
        .unwrap();
    let ordered: Ordered = serde_json::from_str(line).unwrap();
    let obj = file.as_object().unwrap();
    let file_keys: Vec<&str> = ordered.0.iter().map(|(k, _)| k.as_str()).collect();
    let record_keys: Vec<&str> = record
        .iter()
        .map(|(k, _)| k.as_str())
        .skip_while(|k| *k != "container")
        .collect();
    assert_eq!(record_keys, file_keys, "log record keys vs file keys");
    for (key, text) in record.iter().skip_while(|(k, _)| k != "container") {
        match &obj[key] {
            Value::String(s) => assert_eq!(text, s, "{key}"),
            Value::Number(n) => {
                let logged: f64 = text.parse().unwrap_or_else(|e| panic!("{key}={text}: {e}"));
                assert!(
                    same(logged, n.as_f64().unwrap()),
                    "{key}: log {text}, file {n}"
                );
            }
            other => panic!("{key}: a {other:?} in the file line"),
        }
    }

    // Identity and job, against the info series.
    let m = d.metrics();
    let info = |label: &str| label_value(&m, "apptheus_container_info", &id, label);
    let job = |label: &str| label_value(&m, "apptheus_container_job_info", &id, label);
    assert_eq!(file["container"], id);
    assert_eq!(file["user"], "root");
    assert_eq!(file["uid"], "0");
    assert_eq!(file["pid"], pid);
    assert_eq!(file["exe"], "apptheus-exec");
    assert_eq!(
        Some(file["exe_path"].as_str().unwrap().to_string()),
        info("exe_path")
    );
    assert_eq!(
        Some(file["cgroup"].as_str().unwrap().to_string()),
        info("cgroup")
    );
    assert_eq!(file["job_scheduler"], "slurm");
    assert_eq!(file["job_id"], "4242");
    assert_eq!(file["job_source"], "environment");
    assert_eq!(file["job_account"], "proj1");
    assert_eq!(file["job_partition"], "batch");
    assert_eq!(file["job_image"], "/images/test.sif");
    assert_eq!(job("job_id").as_deref(), Some("4242"));

    // Times: the series', and what the test saw.
    let start = file["start_time_seconds"].as_f64().unwrap();
    let end = file["end_time_seconds"].as_f64().unwrap();
    let series = |name: &str| sample(&m, name, &format!("container=\"{id}\""));
    assert!(same_opt(
        Some(start),
        series("apptheus_container_start_time_seconds")
    ));
    assert!(same_opt(
        Some(end),
        series("apptheus_container_end_time_seconds")
    ));
    assert!(
        start >= before_start - 0.5 && end <= exited + 0.5,
        "{start} {end}"
    );
    let duration = file["duration_seconds"].as_f64().unwrap();
    assert!(
        (duration - (end - start)).abs() < 0.002,
        "{duration} vs {}",
        end - start
    );
    assert!(duration >= 1.0, "1 s of CPU in {duration} s");
    assert!(file["start_time"].as_str().unwrap().ends_with('Z'));

    // Each number is the final value of its series.
    let numbers = [
        (
            "cpu_seconds",
            "apptheus_container_cpu_usage_seconds_total",
            "",
        ),
        ("cpus_allowed", "apptheus_container_spec_cpus", ""),
        (
            "cpu_user_seconds",
            "apptheus_container_cpu_user_seconds_total",
            "",
        ),
        (
            "cpu_system_seconds",
            "apptheus_container_cpu_system_seconds_total",
            "",
        ),
        (
            "memory_peak_bytes",
            "apptheus_container_memory_max_usage_bytes",
            "",
        ),
        (
            "memory_limit_bytes",
            "apptheus_container_spec_memory_limit_bytes",
            "",
        ),
        ("forks", "apptheus_container_forks_total", ""),
        ("execs", "apptheus_container_execs_total", ""),
        (
            "io_read_bytes",
            "apptheus_container_blkio_read_bytes_total",
            "",
        ),
        (
            "io_write_bytes",
            "apptheus_container_blkio_write_bytes_total",
            "",
        ),
        (
            "cpu_cfs_periods",
            "apptheus_container_cpu_cfs_periods_total",
            "",
        ),
        (
            "cpu_cfs_throttled_periods",
            "apptheus_container_cpu_cfs_throttled_periods_total",
            "",
        ),
        (
            "cpu_cfs_throttled_seconds",
            "apptheus_container_cpu_cfs_throttled_seconds_total",
            "",
        ),
        (
            "pressure_cpu_waiting_seconds",
            "apptheus_container_pressure_cpu_waiting_seconds_total",
            "",
        ),
        (
            "pressure_cpu_stalled_seconds",
            "apptheus_container_pressure_cpu_stalled_seconds_total",
            "",
        ),
        (
            "pressure_memory_waiting_seconds",
            "apptheus_container_pressure_memory_waiting_seconds_total",
            "",
        ),
        (
            "pressure_memory_stalled_seconds",
            "apptheus_container_pressure_memory_stalled_seconds_total",
            "",
        ),
        (
            "pressure_io_waiting_seconds",
            "apptheus_container_pressure_io_waiting_seconds_total",
            "",
        ),
        (
            "pressure_io_stalled_seconds",
            "apptheus_container_pressure_io_stalled_seconds_total",
            "",
        ),
        (
            "memory_events_high",
            "apptheus_container_memory_events_total",
            ",event=\"high\"",
        ),
        (
            "memory_events_max",
            "apptheus_container_memory_events_total",
            ",event=\"max\"",
        ),
        (
            "memory_events_oom",
            "apptheus_container_memory_events_total",
            ",event=\"oom\"",
        ),
    ];
    let mut table = BTreeMap::new();
    for (field, family, extra) in numbers {
        let from_series = sample(
            &m,
            family,
            &format!("container=\"{id}\",user=\"root\"{extra}"),
        );
        let in_summary = file.get(field).and_then(Value::as_f64);
        // Absent from the summary exactly where the series is absent (never a zero for it).
        assert!(
            same_opt(in_summary, from_series),
            "{field} {in_summary:?} vs {family}{extra} {from_series:?}"
        );
        table.insert(field, in_summary);
    }
    let cpu = file["cpu_seconds"].as_f64().unwrap();
    assert!((0.95..1.5).contains(&cpu), "1 s burned, {cpu} s of CPU");
    assert!(file["memory_peak_bytes"].as_u64().unwrap() >= 32 << 20);
    assert_eq!(
        file["memory_peak_source"],
        info("memory_peak_source").unwrap()
    );

    // What it was allowed: this test's CPUs (a cpuset when fewer than the host's), no quota.
    let (allowed, source) = match cpus() {
        n if n < online_cpus() => (n as f64, "cpuset"),
        _ => (online_cpus() as f64, "host"),
    };
    assert_eq!(file["cpus_allowed"], allowed);
    assert_eq!(file["cpus_allowed_source"], source);
    assert_eq!(info("cpus_source").as_deref(), Some(source));
    let efficiency = file["cpu_efficiency"].as_f64().unwrap();
    let expected = cpu / (duration * allowed);
    assert!(
        (efficiency - expected).abs() < 0.001,
        "efficiency {efficiency}, expected {expected:.4}"
    );
    // How it ended, from the tracker: a clean exit, no OOM kill, no failed process, and its
    // network counters (a workload without sockets may have sent nothing: zero, not absent).
    assert_eq!(file["exit_code"], 0, "{file}");
    assert_eq!(file["oom_kills"], 0, "{file}");
    assert_eq!(file["failed_exits"], 0, "{file}");
    for present in ["network_receive_bytes", "network_transmit_bytes"] {
        assert!(
            file[present].as_u64().is_some(),
            "{present} missing in {file}"
        );
    }
    println!(
        "summary of {id}: duration {duration} s, CPU {cpu} s on {allowed} CPUs ({source}), efficiency {efficiency}, peak {} bytes; final series {table:?}",
        file["memory_peak_bytes"]
    );
}

/// The same number, but for the last bit: serde_json's default float parser (the test reads
/// the file with it) may be off by one ulp, where the daemon printed the shortest exact text.
fn same(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs())
}

fn same_opt(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (a, b) => a == b,
    }
}

fn common_unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A cgroup made by the test with a memory limit, for a launcher to start in alone: the daemon
/// takes it as the container's own cgroup. v1 memory hierarchy (no memory+swap limit: with one
/// at or below the memory limit the charge fails against memsw, whose failcnt Linux 6.18 no
/// longer keeps; see docs/metrics.md), else below the v2 root (whose cgroup.subtree_control must enable
/// memory). Removed when dropped.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let name = common::unique("apptheus-test-oom");
        if let Some(memory) = mount_of("memory") {
            let cg = MemoryCgroup(memory.join(&name));
            std::fs::create_dir(&cg.0).unwrap();
            std::fs::write(cg.0.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
            return cg;
        }
        let root = mount_of("").expect("neither a v1 memory hierarchy nor a unified tree");
        let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap();
        assert!(
            enabled.split_whitespace().any(|c| c == "memory"),
            "no v1 memory hierarchy, and memory is not enabled in {}/cgroup.subtree_control",
            root.display()
        );
        let cg = MemoryCgroup(root.join(&name));
        std::fs::create_dir(&cg.0).unwrap();
        std::fs::write(cg.0.join("memory.max"), limit.to_string()).unwrap();
        let _ = std::fs::write(cg.0.join("memory.swap.max"), "0");
        cg
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = eventually(Duration::from_secs(3), || {
            common::remove_cgroup_tree(&self.0);
            (!self.0.exists()).then_some(())
        });
    }
}

/// A container that allocates 4 times its memory limit is OOM-killed: its `max` memory events
/// count the charges that hit the limit (v1: memory.failcnt), v2 also counts the `oom` event,
/// and its summary says so, with its limit and a peak at the limit.
#[test]
fn hitting_the_memory_limit_shows_in_memory_events_and_the_summary() {
    const LIMIT: u64 = 64 << 20;
    let cg = MemoryCgroup::new(LIMIT);
    let files = tempfile::tempdir().unwrap();
    let summaries = files.path().join("summary.jsonl");
    let d = Daemon::start(&[
        "--monitor.interval=200ms",
        &format!("--container.summary-file={}", summaries.display()),
    ]);
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} --socket={} -- {} ready wait alloc:256 ready wait",
        cg.0.display(),
        bin("apptheus-exec").display(),
        d.socket.display(),
        common::workload_bin().display()
    );
    let mut w = Launcher(Workload::spawn_cmd(
        Command::new("sh").args(["-c", &script]),
    ));
    w.0.ready();
    let pid = w.0.pid();
    shown(&d, pid);
    w.0.go();
    let status = w.0.wait();
    assert!(
        !status.success(),
        "a 256 MiB allocation succeeded under a 64 MiB limit"
    );
    let s = summary_line(&summaries, &exec_id(pid), &d);
    println!("summary of the OOM-killed container ({status}): {s}");
    let max = s["memory_events_max"]
        .as_u64()
        .unwrap_or_else(|| panic!("no memory_events_max: {s}"));
    assert!(max > 0, "no charge hit the limit: {s}");
    assert_eq!(s["memory_limit_bytes"], LIMIT, "{s}");
    let peak = s["memory_peak_bytes"].as_u64().unwrap();
    assert!(
        (LIMIT * 9 / 10..=LIMIT).contains(&peak),
        "peak {peak} vs limit {LIMIT}"
    );
    if mount_of("memory").is_none() {
        assert!(s["memory_events_oom"].as_u64().unwrap() >= 1, "{s}");
    } else {
        // v1 counts no high or oom events: absent, not zero.
        assert!(s.get("memory_events_oom").is_none() && s.get("memory_events_high").is_none());
    }
    // The tracker saw the kill: the OOM killer's victim, and the workload ended by SIGKILL.
    assert!(s["oom_kills"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["failed_exits"].as_u64().unwrap() >= 1, "{s}");
    let m = d.metrics();
    let series = sample(
        &m,
        "apptheus_container_memory_events_total",
        &format!("container=\"{}\",user=\"root\",event=\"max\"", exec_id(pid)),
    );
    assert_eq!(series, Some(max as f64), "{m}");
}

/// The summary file is rotated (renamed away) while the daemon runs: the next container's
/// line goes to a new file at the path, created 0640 and root's; the old file keeps its line.
#[test]
fn the_summary_file_is_reopened_after_rotation() {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("summary.jsonl");
    let d = Daemon::start(&[
        "--monitor.interval=200ms",
        &format!("--container.summary-file={}", path.display()),
    ]);
    let meta = std::fs::metadata(&path).expect("the file is made at start");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    let run = |d: &Daemon| {
        let mut w = Launcher(d.exec_workload(&["ready", "wait"]));
        w.0.ready();
        shown(d, w.0.pid());
        w.0.go();
        assert!(w.0.wait().success());
        exec_id(w.0.pid())
    };
    let first = run(&d);
    summary_line(&path, &first, &d);
    let rotated = files.path().join("summary.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    let second = run(&d);
    summary_line(&path, &second, &d);
    let old: Vec<Value> = json_lines(&rotated);
    let new: Vec<Value> = json_lines(&path);
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0]["container"], first.as_str());
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["container"], second.as_str());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert!(
        d.log_text()
            .contains("msg=\"container summary file reopened (rotated or removed)\""),
        "{}",
        d.log_text()
    );
}

/// With every optional group disabled, a busy container's files of those groups are never
/// opened (inotify watches them while the sampler does full reads every 100 ms: a control file
/// of the core groups shows the opens), and their families are not exported.
#[test]
fn disabled_groups_are_neither_read_nor_exported() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let d = Daemon::start(&[
        "--monitor.interval=100ms",
        "--collector.disable=pressure,throttling,memory_events,processes,io",
    ]);
    let mut w = Launcher(d.exec_workload(&["ready", "burn:30"]));
    w.0.ready();
    let pid = w.0.pid();
    shown(&d, pid);
    // The files of the disabled groups in this host's layout, and a control the core reads.
    let mut watched: Vec<(PathBuf, bool)> = Vec::new();
    let unified = dir_of(pid, "");
    let memory_v1 = dir_of(pid, "memory");
    if let Some(u) = &unified {
        for f in ["cpu.pressure", "memory.pressure", "io.pressure"] {
            watched.push((u.join(f), false));
        }
    }
    if let Some(cpu) = dir_of(pid, "cpu") {
        watched.push((cpu.join("cpu.stat"), false));
    }
    match (&memory_v1, &unified) {
        (Some(m), _) => {
            watched.push((m.join("memory.failcnt"), false));
            watched.push((m.join("memory.stat"), true));
        }
        (None, Some(u)) if u.join("memory.events").exists() => {
            watched.push((u.join("memory.events"), false));
            watched.push((u.join("memory.stat"), true));
        }
        (None, Some(u)) => watched.push((u.join("cgroup.threads"), true)),
        (None, None) => panic!("the container has neither a v1 memory nor a v2 directory"),
    }
    if let Some(b) = dir_of(pid, "blkio") {
        watched.push((b.join("blkio.throttle.io_service_bytes_recursive"), false));
    } else if let Some(u) = &unified
        && u.join("io.stat").exists()
    {
        watched.push((u.join("io.stat"), false));
    }
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    let mut names = BTreeMap::new();
    for (path, _) in &watched {
        assert!(
            path.exists(),
            "{} is missing: nothing to watch",
            path.display()
        );
        let wd = inotify.add_watch(path, AddWatchFlags::IN_OPEN).unwrap();
        names.insert(wd, path.clone());
    }
    // The burning container changes its CPU time at every pass: each pass reads it fully.
    let watch_for = Duration::from_millis(1500);
    let end = Instant::now() + watch_for;
    let mut opens: BTreeMap<PathBuf, usize> = BTreeMap::new();
    while Instant::now() < end {
        match inotify.read_events() {
            Ok(events) => {
                for e in events {
                    *opens.entry(names[&e.wd].clone()).or_default() += 1;
                }
            }
            Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("inotify: {e}"),
        }
    }
    println!("opens in {watch_for:?} with the groups disabled:");
    for (path, control) in &watched {
        let n = opens.get(path).copied().unwrap_or(0);
        println!(
            "  {n:>3}  {}{}",
            path.display(),
            if *control { " (control)" } else { "" }
        );
        if *control {
            assert!(
                n >= 5,
                "the control file {} was opened only {n} times in {watch_for:?}: the sampler did not read",
                path.display()
            );
        } else {
            assert_eq!(
                n,
                0,
                "{} was opened though its group is disabled",
                path.display()
            );
        }
    }
    let m = d.metrics();
    for gone in [
        "apptheus_container_pressure_",
        "apptheus_container_cpu_cfs_",
        "apptheus_container_memory_events_total",
        "apptheus_container_processes",
        "apptheus_container_forks_total",
        "apptheus_container_blkio_",
    ] {
        assert!(!m.contains(gone), "{gone} exported though disabled:\n{m}");
    }
    assert!(
        sample(
            &m,
            "apptheus_container_cpu_usage_seconds_total",
            &label(pid)
        )
        .is_some()
    );
    assert!(
        d.log_text()
            .contains("collectors=io,processes,pressure,throttling,memory_events"),
        "{}",
        d.log_text()
    );
    drop(w);
}

/// Bad values of the new flags stop the daemon with exit 2 naming the flag; a summary file the
/// daemon cannot open stops it at start (exit 1) naming the flag.
#[test]
fn bad_collector_and_summary_flags_stop_the_daemon() {
    common::require_root();
    for (args, flag) in [
        (
            vec!["--collector.disable=pressure,bogus"],
            "--collector.disable",
        ),
        (vec!["--collector.disable=PRESSURE"], "--collector.disable"),
        (
            vec!["--container.summary-file=summary.jsonl"],
            "--container.summary-file",
        ),
    ] {
        let out = Command::new(bin("apptheus")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("apptheus"))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg(format!(
            "--socket.path={}",
            dir.path().join("gw.sock").display()
        ))
        .arg(format!(
            "--state.dir={}",
            dir.path().join("state").display()
        ))
        .arg(format!(
            "--container.summary-file={}",
            dir.path().join("no/such/dir/summary.jsonl").display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--container.summary-file"), "{err}");
}
