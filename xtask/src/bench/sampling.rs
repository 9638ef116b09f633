//! Sampling cost: the daemon's CPU over a window with the containers live and no scrapes,
//! against two floors (xtask/bench/floor.c), all three at the same time so that they see the
//! same machine:
//! - the floor: every container's CPU probe file kept open and read again with one pread per
//!   pass (the least any reader of these files can do);
//! - the same-files floor: that, plus every other file the daemon opened, opened, read and
//!   closed at the daemon's rate. The list comes from the running daemon itself:
//!   `strace -f -e trace=openat` over 30 s lists every open in order; the floor reads one
//!   pass's share of it each interval, cycling through it.
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx, Daemon,
    sys::{self, Proc, Spread},
};

pub struct Sampling {
    pub containers: usize,
    pub window_s: f64,
    /// The daemon's CPU in percent of one core, whole window and per 10 s slice.
    pub daemon_pct: f64,
    pub daemon_slices: Spread,
    /// The floor: every container's probe kept open and read with one pread per pass.
    pub floor_pct: f64,
    pub floor_slices: Spread,
    /// The same-files floor: the probes as above, plus every other file the daemon opened,
    /// opened, read and closed at the daemon's rate.
    pub files_floor_pct: f64,
    pub files_floor_slices: Spread,
    /// Probe files; other opens per pass (with repeats), distinct paths among them, failed
    /// reads in the same-files floor.
    pub probes: usize,
    pub files_per_pass: usize,
    pub distinct: usize,
    pub floor_failed: u64,
    pub by_kind: Vec<(String, usize)>,
    /// From the daemon's own histogram over the window.
    pub pass_ms: f64,
    /// `perf report`'s top symbols over a window after the measured one, where asked for.
    pub profile: Option<String>,
}

/// A floor program running next to the daemon.
struct Floor {
    proc: Proc,
    marks: Vec<f64>,
    total: Option<String>,
}

pub fn run(ctx: &Ctx, d: &Daemon, secs: u64, profile: bool) -> Result<Sampling> {
    let probes = probe_paths(ctx);
    if probes.is_empty() {
        bail!("found no container's CPU probe file below the bench's cgroups");
    }
    let (list, trace_passes) = trace_passes(ctx, d)?;
    let files_per_pass = list.len().div_ceil(trace_passes);
    let distinct = {
        let mut v = list.clone();
        v.sort();
        v.dedup();
        v.len()
    };
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for p in &list {
        *kinds.entry(kind(p)).or_default() += 1;
    }
    let mut by_kind: Vec<(String, usize)> = kinds
        .into_iter()
        .map(|(k, n)| (k, n.div_ceil(trace_passes)))
        .collect();
    by_kind.sort_by_key(|k| std::cmp::Reverse(k.1));
    ctx.say(format!(
        "  {} probe files; besides them one pass opens {files_per_pass} files ({distinct} distinct); floors and daemon run {secs} s side by side",
        probes.len()
    ));
    let probes_path = ctx.tmp.join("floor.probes");
    std::fs::write(&probes_path, probes.join("\n") + "\n").context("writing the probe list")?;
    let rest_path = ctx.tmp.join("floor.rest");
    std::fs::write(&rest_path, list.join("\n") + "\n").context("writing the floor's list")?;
    let empty_path = ctx.tmp.join("floor.empty");
    std::fs::write(&empty_path, "").context("writing an empty list")?;

    let before_hist = histogram(d)?;
    let start = |rest: &std::path::Path| -> Result<Proc> {
        let mut cmd = Command::new(ctx.bin("floor"));
        cmd.arg(&probes_path)
            .arg(rest)
            .arg(ctx.cfg.interval_ms.to_string())
            .arg(secs.to_string())
            .arg(trace_passes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Proc::spawn("floor", &mut cmd)
    };
    let t0 = Instant::now();
    let cpu0 = sys::cpu_seconds(d.pid())?;
    let mut floors = [start(&empty_path)?, start(&rest_path)?].map(|proc| Floor {
        proc,
        marks: vec![0.0],
        total: None,
    });
    // Each floor's lines on a thread of its own; the daemon's CPU at the first floor's 10 s
    // marks, read as it prints them.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String)>();
    let mut readers = Vec::new();
    for (i, f) in floors.iter_mut().enumerate() {
        let out = f.proc.child.stdout.take().context("floor stdout")?;
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((i, line)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut daemon_marks = vec![(0.0, cpu0)];
    for (i, line) in rx {
        if let Some(v) = line.strip_prefix("slice ") {
            if i == 0 {
                daemon_marks.push((t0.elapsed().as_secs_f64(), sys::cpu_seconds(d.pid())?));
            }
            floors[i].marks.push(v.trim().parse().unwrap_or(f64::NAN));
        } else if let Some(rest) = line.strip_prefix("cpu_seconds ") {
            floors[i].total = Some(rest.to_string());
        }
    }
    readers.into_iter().for_each(|r| {
        let _ = r.join();
    });
    let window_s = t0.elapsed().as_secs_f64();
    let cpu1 = sys::cpu_seconds(d.pid())?;
    let after_hist = histogram(d)?;
    let mut results = Vec::new();
    for f in floors.iter_mut() {
        let st = f.proc.child.wait().context("waiting for a floor")?;
        let Some(total) = f.total.clone().filter(|_| st.success()) else {
            bail!("the floor program failed ({st})");
        };
        let cpu: f64 = total
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .context("floor: no cpu_seconds")?;
        let failed: u64 = total
            .split_whitespace()
            .skip_while(|w| *w != "failed")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let slices: Vec<f64> = f
            .marks
            .windows(2)
            .map(|w| (w[1] - w[0]) / 10.0 * 100.0)
            .collect();
        results.push((cpu / secs as f64 * 100.0, Spread::of(&slices), failed));
    }
    let daemon_slices: Vec<f64> = daemon_marks
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0) * 100.0)
        .collect();
    let passes = after_hist.1 - before_hist.1;
    let pass_ms = if passes > 0.0 {
        (after_hist.0 - before_hist.0) / passes * 1000.0
    } else {
        f64::NAN
    };
    let s = Sampling {
        containers: probes.len(),
        window_s,
        daemon_pct: (cpu1 - cpu0) / window_s * 100.0,
        daemon_slices: Spread::of(&daemon_slices),
        floor_pct: results[0].0,
        floor_slices: results[0].1,
        files_floor_pct: results[1].0,
        files_floor_slices: results[1].1,
        probes: probes.len(),
        files_per_pass,
        distinct,
        floor_failed: results[1].2,
        by_kind,
        pass_ms,
        profile: None,
    };
    ctx.say(format!(
        "  daemon {:.2}% of a core, pread floor {:.2}% (ratio {:.2}), same-files floor {:.2}% (ratio {:.2}); a pass takes {:.1} ms",
        s.daemon_pct,
        s.floor_pct,
        s.daemon_pct / s.floor_pct,
        s.files_floor_pct,
        s.daemon_pct / s.files_floor_pct,
        s.pass_ms
    ));
    let mut s = s;
    if profile {
        s.profile = match perf(ctx, d) {
            Ok(p) => Some(p),
            Err(e) => Some(format!("(no profile: {e:#})")),
        };
    }
    Ok(s)
}

/// A profile of the idle daemon: `perf record -g` at 999 Hz for 20 s (after the measured
/// window, so that perf's own interrupts do not count in it), its top symbols by self time.
fn perf(ctx: &Ctx, d: &Daemon) -> Result<String> {
    let data = ctx.tmp.join("perf.data");
    ctx.say("  profiling the daemon's passes with perf for 20 s");
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &d.pid().to_string(), "--", "sleep", "20"]);
    crate::setup::output(&mut cmd).context("perf record")?;
    let mut cmd = Command::new("perf");
    cmd.args(["report", "-i"]).arg(&data).args([
        "--no-children",
        "--sort",
        "dso,symbol",
        "--stdio",
        "-g",
        "none",
        "--percent-limit",
        "1.5",
    ]);
    let out = crate::setup::output(&mut cmd).context("perf report")?;
    let samples = out
        .lines()
        .find(|l| l.starts_with("# Samples:"))
        .unwrap_or("")
        .trim_start_matches("# ")
        .to_string();
    let lines: Vec<String> = out
        .lines()
        .filter(|l| l.contains('%') && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .map(|l| l.trim_end_matches(" - -").to_string())
        .take(25)
        .collect();
    Ok(format!("{samples}\n{}", lines.join("\n")))
}

/// Every live container's CPU probe below the bench's cgroup parent: v1 cpuacct.usage where a
/// cpuacct hierarchy is mounted, else the unified tree's cpu.stat (what the daemon reads).
fn probe_paths(ctx: &Ctx) -> Vec<String> {
    let dirs: Vec<std::path::PathBuf> = sys::cgroup_dirs(&ctx.parent)
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    let pick = |file: &str| -> Vec<String> {
        dirs.iter()
            .map(|d| d.join(file))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect()
    };
    let v1 = pick("cpuacct.usage");
    if v1.is_empty() { pick("cpu.stat") } else { v1 }
}

/// Sum and count of `apptheus_sample_duration_seconds`.
fn histogram(d: &Daemon) -> Result<(f64, f64)> {
    let text = d.metrics()?;
    let get = |name| sys::samples(&text, name).first().map_or(0.0, |s| s.1);
    Ok((
        get("apptheus_sample_duration_seconds_sum"),
        get("apptheus_sample_duration_seconds_count"),
    ))
}

/// The sort of file, for the report: its file name, with /proc pids folded.
fn kind(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    if path.starts_with("/proc/") {
        format!("/proc/*/{name}")
    } else {
        name.to_string()
    }
}

/// Every file the daemon opened over 30 s of sampling passes (what can move in an idle
/// container is read again every 30 s: apptheus/src/sampler.rs, FULL_SAMPLE_EVERY), in order, and how many passes that was. The floor reads one pass's
/// share of the list each interval, cycling through it: the same files at the same rate, also
/// those the daemon reads only every few passes. The probes are kept open, so they are not in
/// the list (any that is, a reopen, is read as the daemon did).
fn trace_passes(ctx: &Ctx, d: &Daemon) -> Result<(Vec<String>, usize)> {
    let out = ctx.tmp.join("strace.out");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=openat", "-o"])
        .arg(&out)
        .args(["-p", &d.pid().to_string()]);
    sys::quiet(&mut cmd);
    let mut strace = Proc::spawn("strace", &mut cmd)?;
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    // SIGINT makes strace detach and leave the daemon running untraced.
    sys::kill(strace.pid(), libc::SIGINT);
    let st = strace.child.wait().context("waiting for strace")?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading strace's output ({st})"))?;
    let list: Vec<String> = text
        .lines()
        .filter_map(|line| line.split_once("openat(").map(|x| x.1))
        .filter_map(|rest| rest.split('"').nth(1))
        .map(str::to_string)
        .collect();
    let passes = (window.as_millis() as usize / ctx.cfg.interval_ms.max(1) as usize).max(1);
    ctx.say(format!(
        "  strace: {} opens over {} s ({passes} passes)",
        list.len(),
        window.as_secs()
    ));
    Ok((list, passes))
}
