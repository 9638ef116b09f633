//! Sampling cost: the daemon's CPU over a window with the containers live and no scrapes,
//! against a floor: xtask/bench/floor.c opening, reading and closing exactly the files one
//! sampling pass of the daemon opens, at the same interval, over the same window (both run at
//! the same time, so they see the same machine).
//!
//! The file list comes from the running daemon itself: `strace -f -e trace=openat` for a few
//! passes lists every open in order; the floor reads one pass's share of that list each interval,
//! cycling through it (passes: how often the most-read container file, its CPU probe, was opened).
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
    pub window_s: f64,
    /// The daemon's CPU in percent of one core, whole window and per 10 s slice.
    pub daemon_pct: f64,
    pub daemon_slices: Spread,
    pub floor_pct: f64,
    pub floor_slices: Spread,
    /// Files opened per pass (with repeats), distinct paths, failed opens in the floor.
    pub files_per_pass: usize,
    pub distinct: usize,
    pub floor_failed: u64,
    pub by_kind: Vec<(String, usize)>,
    /// From the daemon's own histogram over the window.
    pub pass_ms: f64,
}

pub fn run(ctx: &Ctx, d: &Daemon) -> Result<Sampling> {
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
        "  one pass opens {files_per_pass} files ({distinct} distinct); floor and daemon run {} s side by side",
        ctx.cfg.sampling_secs
    ));
    let list_path = ctx.tmp.join("floor.list");
    std::fs::write(&list_path, list.join("\n") + "\n").context("writing the floor's list")?;

    let before_hist = histogram(d)?;
    let secs = ctx.cfg.sampling_secs;
    let mut cmd = Command::new(ctx.bin("floor"));
    cmd.arg(&list_path)
        .arg(ctx.cfg.interval_ms.to_string())
        .arg(secs.to_string())
        .arg(trace_passes.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let cpu0 = sys::cpu_seconds(d.pid())?;
    let mut floor = Proc::spawn("floor", &mut cmd)?;
    let out = floor.child.stdout.take().context("floor stdout")?;
    // The daemon's CPU at the floor's 10 s marks, read as the floor prints them.
    let mut daemon_marks = vec![(0.0, cpu0)];
    let mut floor_marks = vec![0.0];
    let mut total = None;
    for line in BufReader::new(out).lines() {
        let line = line.context("reading the floor's output")?;
        if let Some(v) = line.strip_prefix("slice ") {
            daemon_marks.push((t0.elapsed().as_secs_f64(), sys::cpu_seconds(d.pid())?));
            floor_marks.push(v.trim().parse().unwrap_or(f64::NAN));
        } else if let Some(rest) = line.strip_prefix("cpu_seconds ") {
            total = Some(rest.to_string());
        }
    }
    let st = floor.child.wait().context("waiting for the floor")?;
    let window_s = t0.elapsed().as_secs_f64();
    let cpu1 = sys::cpu_seconds(d.pid())?;
    let after_hist = histogram(d)?;
    let Some(total) = total.filter(|_| st.success()) else {
        bail!("the floor program failed ({st})");
    };
    let mut words = total.split_whitespace();
    let floor_cpu: f64 = words
        .next()
        .and_then(|v| v.parse().ok())
        .context("floor: no cpu_seconds")?;
    let floor_failed = total
        .split_whitespace()
        .skip_while(|w| *w != "failed")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let daemon_slices: Vec<f64> = daemon_marks
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0) * 100.0)
        .collect();
    let floor_slices: Vec<f64> = floor_marks
        .windows(2)
        .map(|w| (w[1] - w[0]) / 10.0 * 100.0)
        .collect();
    let passes = after_hist.1 - before_hist.1;
    let pass_ms = if passes > 0.0 {
        (after_hist.0 - before_hist.0) / passes * 1000.0
    } else {
        f64::NAN
    };
    let s = Sampling {
        window_s,
        daemon_pct: (cpu1 - cpu0) / window_s * 100.0,
        daemon_slices: Spread::of(&daemon_slices),
        floor_pct: floor_cpu / secs as f64 * 100.0,
        floor_slices: Spread::of(&floor_slices),
        files_per_pass,
        distinct,
        floor_failed,
        by_kind,
        pass_ms,
    };
    ctx.say(format!(
        "  daemon {:.2}% of a core, floor {:.2}% (ratio {:.2}); a pass takes {:.1} ms",
        s.daemon_pct,
        s.floor_pct,
        s.daemon_pct / s.floor_pct,
        s.pass_ms
    ));
    Ok(s)
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

/// Every file the daemon opened over a few sampling passes, in order, and how many passes that
/// was. The floor reads one pass's share of the list each interval, cycling through it: the
/// same files at the same rate, also those the daemon reads only every few passes (an idle
/// container's files other than its CPU probe, the ancestors' limits).
fn trace_passes(ctx: &Ctx, d: &Daemon) -> Result<(Vec<String>, usize)> {
    let out = ctx.tmp.join("strace.out");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=openat", "-o"])
        .arg(&out)
        .args(["-p", &d.pid().to_string()]);
    sys::quiet(&mut cmd);
    let mut strace = Proc::spawn("strace", &mut cmd)?;
    // Long enough for several whole passes even when tracing slows them down.
    std::thread::sleep(Duration::from_millis(
        (8 * ctx.cfg.interval_ms).max(3000) + ctx.cfg.containers as u64 * 2,
    ));
    // SIGINT makes strace detach and leave the daemon running untraced.
    sys::kill(strace.pid(), libc::SIGINT);
    let st = strace.child.wait().context("waiting for strace")?;
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading strace's output ({st})"))?;
    let mut list: Vec<String> = Vec::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.split_once("openat(").map(|x| x.1) else {
            continue;
        };
        let Some(path) = rest.split('"').nth(1) else {
            continue;
        };
        *count.entry(path.to_string()).or_default() += 1;
        list.push(path.to_string());
    }
    // Some file of each container's own cgroup (its CPU probe) is opened at every pass.
    let passes = count
        .iter()
        .filter(|(p, _)| p.contains("/apptheus-exec_") && p.starts_with("/sys/fs/cgroup"))
        .map(|(_, c)| *c)
        .max();
    let Some(passes) = passes else {
        bail!(
            "strace saw the daemon open no container cgroup file in {} (it may keep them open: derive the floor's list from apptheus/src/cgroup instead)",
            out.display()
        );
    };
    ctx.say(format!(
        "  strace: {} opens over {passes} passes",
        list.len()
    ));
    Ok((list, passes))
}
