//! The soak's short version (`cargo xtask soak` is the full one; its figures are in
//! docs/benchmarks.md): 2,000 short containers, 50 alive at once, through one daemon scraped by
//! a real Prometheus every second, with the soak's launcher (xtask/bench/soak-launcher.c: it
//! waits until it is admitted, then its command ends in one of five ways: exit 0, exit 3,
//! SIGTERM, an OOM kill in a job cgroup limited to 32 MiB, a burst of forks). After them: RSS
//! growth slowing down (see `REF_AT`), descriptors back to their idle count, no
//! container cgroup left, exactly one summary record per container with the launcher's exit
//! code, no counter of a container decreasing in Prometheus. The eBPF maps' occupancy needs
//! bpftool: the full soak checks it.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    collections::HashMap,
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, cgroups::TestCgroup, eventually, prometheus::Prometheus};

const CONTAINERS: usize = 2000;
const ALIVE: usize = 50;
/// RSS is compared with its value once this many containers have ended (the first half).
/// The daemon's heap grows to its working size over the first several thousand containers (the
/// full soak: 37 MiB after 2,000, 46 after 10,000, 47 after 100,000 once drained), so a short
/// run cannot hold it to +2 MiB: here the second half may add at most half of what the first
/// added (growth slowing down, not a cost per container), or 2 MiB; the full soak holds it to
/// +2 MiB after its first 10,000.
const REF_AT: usize = 1000;
/// The commands' mean run time once admitted.
const HOLD_MS: u64 = 500;

/// The mix of 20 (as the full soak's), the launcher's argument and its expected exit code.
fn kind(i: usize) -> (&'static str, i32) {
    match i % 20 {
        0..=7 => ("ok", 0),
        8..=10 => ("fail", 3),
        11..=13 => ("signal", 128 + libc::SIGTERM),
        14 | 15 => ("oom", 128 + libc::SIGKILL),
        _ => ("forks", 0),
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

struct Launch {
    id: String,
    code: i32,
    want: i32,
    oom: bool,
}

#[test]
fn two_thousand_short_containers_leave_nothing_behind() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Named `launcher` as in the bench: container ids `launcher_<pid>`.
    let launcher = dir.path().join("launcher");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/bench/soak-launcher.c");
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&launcher)
        .arg(&src)
        .status()
        .expect("cc (a C compiler: cargo links with it)");
    assert!(cc.success(), "compiling {}", src.display());
    let summary = dir.path().join("summary.jsonl");
    let d = Daemon::start_with_trust(&[
        &format!("--trust.path={}", launcher.display()),
        // Ended containers are reaped during the run, not all at its end.
        "--container.retention=2s",
        &format!("--container.summary-file={}", summary.display()),
        // One user (root) starts them all, faster than the per-user defaults admit.
        "--gateway.admission-rate-per-user=100000",
        "--gateway.admission-burst-per-user=4096",
    ]);
    let pid = d.child.id();
    // A job per OOM container alive at once, give or take: several commands filling one
    // job's limit together thrash on its reclaim for seconds before the OOM killer picks one.
    let jobs: Vec<TestCgroup> = (0..ALIVE / 4)
        .map(|_| {
            let job = TestCgroup::new("apptheus-soak-job", &["memory"]);
            job.limit_memory(32 << 20);
            job
        })
        .collect();
    let prom = Prometheus::start(&format!("127.0.0.1:{}", d.port));
    // Idle: the daemon's descriptors once it serves (Prometheus scrapes it: one connection).
    let up = prom.query_until("up == 1", Duration::from_secs(30), |a| {
        a.success_with_data()
    });
    assert!(up.success_with_data(), "Prometheus never scraped: {up:?}");
    let fds_idle = fds(pid);
    let rss_idle = rss_kib(pid);

    let mut launches: Vec<Launch> = Vec::with_capacity(CONTAINERS);
    let mut flight: Vec<(usize, Child)> = Vec::new();
    let (mut ended, mut rss_ref, mut families) = (0, 0, Vec::new());
    let mut rss_steps = Vec::new();
    let t0 = Instant::now();
    while ended < CONTAINERS {
        while flight.len() < ALIVE && launches.len() < CONTAINERS {
            let i = launches.len();
            let (k, want) = kind(i);
            let hold = HOLD_MS / 2 + (i as u64 * 7919) % HOLD_MS;
            let mut cmd = Command::new(&launcher);
            cmd.arg(&d.socket).arg(k).arg(hold.to_string());
            if k == "oom" {
                // The OOM kinds alive at once are consecutive ones: in different jobs.
                cmd.args(jobs[(i / 20) % jobs.len()].dirs());
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            launches.push(Launch {
                id: format!("launcher_{}", child.id()),
                code: -1,
                want,
                oom: k == "oom",
            });
            flight.push((i, child));
        }
        let before = flight.len();
        flight.retain_mut(|(i, c)| match c.try_wait().unwrap() {
            Some(st) => {
                // Signal N as the shell shows it, 128+N: a launcher the OOM killer took (it is
                // in the job too) ends its container as its command would have.
                launches[*i].code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
                false
            }
            None => true,
        });
        ended += before - flight.len();
        if ended / 250 > rss_steps.len() {
            rss_steps.push((ended, rss_kib(pid)));
        }
        if rss_ref == 0 && ended >= REF_AT {
            rss_ref = rss_kib(pid);
            families = counter_families(&d.metrics());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "only {ended} of {CONTAINERS} containers ended in 150 s"
        );
        // The launchers' exits are polled; 5 ms keeps 50 launchers' polls cheap.
        std::thread::sleep(Duration::from_millis(5));
    }
    let churn = t0.elapsed();
    let not_admitted: Vec<&Launch> = launches
        .iter()
        .filter(|l| (120..=122).contains(&l.code))
        .collect();
    assert!(
        not_admitted.is_empty(),
        "{} launchers not admitted (120 timeout, 121 refused, 122 no connection): {:?}",
        not_admitted.len(),
        not_admitted
            .iter()
            .take(5)
            .map(|l| (&l.id, l.code))
            .collect::<Vec<_>>()
    );
    let wrong: Vec<&Launch> = launches.iter().filter(|l| l.code != l.want).collect();
    assert!(
        wrong.is_empty(),
        "{} commands did not end as asked: {:?}",
        wrong.len(),
        wrong
            .iter()
            .take(5)
            .map(|l| (&l.id, l.code, l.want))
            .collect::<Vec<_>>()
    );

    // Drained: every container's series gone after the retention.
    let drained = eventually(Duration::from_secs(60), || {
        let m = d.metrics();
        (!m.contains("apptheus_container_info{")).then_some(m)
    });
    let m = drained.unwrap_or_else(|| panic!("series still exported 60 s after the last end"));
    let lost: f64 = m
        .lines()
        .filter(|l| l.starts_with("apptheus_ebpf_events_lost_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Launcher connections and cgroup files close as the daemon notices the ends.
    let fds_back = eventually(Duration::from_secs(30), || {
        (fds(pid) <= fds_idle).then_some(())
    });
    let fds_end = fds(pid);
    let rss_end = rss_kib(pid);
    let cgroups_left: Vec<_> = d
        .cgroup_dirs()
        .iter()
        .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with("launcher_"))
        .map(|e| e.path())
        .collect();

    // One record per container: every line whole, counted per id (a pid reused within the
    // run is one id for two containers).
    let text = std::fs::read_to_string(&summary).unwrap();
    let mut records: HashMap<String, Vec<(f64, Option<i64>, u64)>> = HashMap::new();
    let mut torn = Vec::new();
    for line in text.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v["container"].is_string() => records
                .entry(v["container"].as_str().unwrap().to_string())
                .or_default()
                .push((
                    v["start_time_seconds"].as_f64().unwrap_or(0.0),
                    v["exit_code"].as_i64(),
                    v["oom_kills"].as_u64().unwrap_or(0),
                )),
            _ => torn.push(line.to_string()),
        }
    }
    let mut by_id: HashMap<&str, Vec<&Launch>> = HashMap::new();
    for l in &launches {
        by_id.entry(&l.id).or_default().push(l);
    }
    let reused: Vec<&str> = by_id
        .iter()
        .filter(|(_, ls)| ls.len() > 1)
        .map(|(id, _)| *id)
        .collect();
    let (mut missing, mut duplicated, mut codes, mut oom_unseen) = (0, 0, Vec::new(), 0);
    for (id, ls) in &by_id {
        let mut rs = records.remove(*id).unwrap_or_default();
        rs.sort_by(|a, b| a.0.total_cmp(&b.0));
        missing += ls.len().saturating_sub(rs.len());
        duplicated += rs.len().saturating_sub(ls.len());
        for (l, r) in ls.iter().zip(&rs) {
            if r.1 != Some(i64::from(l.code)) {
                codes.push((id.to_string(), l.code, r.1));
            }
            if l.oom && r.2 == 0 {
                oom_unseen += 1;
            }
        }
    }
    duplicated += records.values().map(Vec::len).sum::<usize>();

    // No counter of a container decreasing, over the whole run (ids of reused pids left out:
    // their series holds two containers).
    let range = format!("{}s", started.elapsed().as_secs() + 60);
    let mut resets = Vec::new();
    let mut series = 0.0;
    for fam in &families {
        let count = prom.query(&format!("count(resets({fam}[{range}]))"));
        series += count
            .series
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let a = prom.query(&format!("resets({fam}[{range}]) > 0"));
        assert_eq!(a.status, "success", "{a:?}");
        resets.extend(
            a.series
                .iter()
                .filter(|s| !reused.iter().any(|r| s["metric"]["container"] == *r))
                .map(|s| s["metric"].to_string()),
        );
    }

    println!(
        "soak: {CONTAINERS} containers in {:.1} s ({:.0}/s, {ALIVE} alive); RSS {:.1} MiB idle, {:.1} after {REF_AT}, {:.1} after all; descriptors {fds_end} (idle {fds_idle}); {} records; {} counter series of {} families checked ({} reused ids left out); events lost {lost}; whole test {:.1} s; RSS steps {rss_steps:?}",
        churn.as_secs_f64(),
        CONTAINERS as f64 / churn.as_secs_f64(),
        rss_idle as f64 / 1024.0,
        rss_ref as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        text.lines().count(),
        series,
        families.len(),
        reused.len(),
        started.elapsed().as_secs_f64()
    );
    let mut problems = Vec::new();
    let allowed = 2048.max(rss_ref.saturating_sub(rss_idle) / 2);
    if rss_end > rss_ref + allowed {
        problems.push(format!(
            "RSS {rss_end} KiB after all, {rss_ref} KiB after the first {REF_AT} ({rss_idle} idle): the second half added more than {allowed} KiB"
        ));
    }
    if fds_back.is_none() {
        problems.push(format!(
            "{fds_end} descriptors, {fds_idle} before the containers"
        ));
    }
    if !cgroups_left.is_empty() {
        problems.push(format!("cgroups left: {cgroups_left:?}"));
    }
    if missing + duplicated > 0 || !torn.is_empty() {
        problems.push(format!(
            "records: {missing} missing, {duplicated} duplicated, torn lines {torn:?}"
        ));
    }
    if !codes.is_empty() || oom_unseen > 0 {
        problems.push(format!(
            "exit codes not the launcher's (id, launcher, record): {:?}; {oom_unseen} OOM-killed without an OOM kill counted",
            &codes[..codes.len().min(10)]
        ));
    }
    if families.is_empty() || series == 0.0 {
        problems.push("no counter series in Prometheus".into());
    }
    if !resets.is_empty() {
        problems.push(format!("counters that decreased: {resets:?}"));
    }
    assert!(
        problems.is_empty(),
        "{}\nlog tail:\n{}",
        problems.join("\n"),
        d.log_text()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The container counter families a /metrics page holds.
fn counter_families(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|n| n.starts_with("apptheus_container_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}
