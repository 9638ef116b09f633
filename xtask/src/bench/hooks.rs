//! eBPF hook cost: the host's fork+exit and fork+execve(/bin/true)+exit loops (xtask/bench/
//! forkloop.c, untracked processes) timed before the daemon starts (A), while it tracks the
//! containers (B), and after it stopped (A again). On a machine with two or more cores the loop is
//! pinned to the last core and, during B, the daemon to the others, so that the daemon's own
//! sampling does not show up as hook cost: what remains is the programs' work in the loop's
//! context. Then, with `kernel.bpf_stats_enabled=1` (restored after), one more loop of each kind
//! gives the programs' own run time per event (run_time_ns / run_cnt), ours side by side with a
//! reference that bpftrace runs in the same loops: one program per tracepoint we hook, whose
//! body is one hash lookup keyed by the current tgid (`BPFTRACE_SCRIPT`), the least a program
//! that follows processes can do. The loops' processes are untracked: that is the cost every
//! task on the host pays.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx, Daemon,
    sys::{self, Proc, Spread},
};

/// The reference: per tracepoint, one lookup in a hash map keyed by the current tgid (`pid` in
/// bpftrace; `BEGIN` declares the map with bpftrace's own pid, so the key's type is that of
/// `pid`, and the map's size is bpftrace's default, 4096).
const BPFTRACE_SCRIPT: &str = "BEGIN { @tracked[pid] = 0; }
tracepoint:task:task_newtask { $k = @tracked[pid]; }
tracepoint:sched:sched_process_exec { $k = @tracked[pid]; }
tracepoint:sched:sched_process_exit { $k = @tracked[pid]; }
";

/// The tracepoints both sides hook, as `bpftool perf` names them, with our program on each.
pub const HOOKS: [(&str, &str); 3] = [
    ("task_newtask", "task_newtask"),
    ("sched_process_exec", "sched_process_exec"),
    ("sched_process_exit", "sched_process_exit"),
];

/// Nanoseconds per iteration of each loop kind, one entry per round.
#[derive(Default, Clone)]
pub struct Loops {
    pub exit_ns: Vec<f64>,
    pub exec_ns: Vec<f64>,
}

/// One program's statistics over the stats loop.
pub struct ProgStat {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

pub struct WithDaemon {
    pub loops: Loops,
    pub progs: Vec<ProgStat>,
    /// bpftrace's one-lookup programs over the same loops, named by their tracepoint.
    pub reference: Vec<ProgStat>,
    /// Iterations of each kind in the stats loop.
    pub stats_iterations: u64,
    /// The programs' run time per loop iteration, for each loop kind.
    pub exit_bpf_ns: f64,
    pub exec_bpf_ns: f64,
    pub pinned: String,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The core the loops run on.
fn loop_core() -> Option<usize> {
    (cores() >= 2).then(|| cores() - 1)
}

fn one(ctx: &Ctx, mode: &str, iterations: u64) -> Result<f64> {
    let bin = ctx.bin("forkloop");
    let mut cmd = match loop_core() {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &c.to_string()]).arg(&bin);
            cmd
        }
        None => Command::new(&bin),
    };
    let out = crate::setup::output(cmd.args([mode, &iterations.to_string()]))?;
    // "iterations N ns_per_iteration X"
    out.split_whitespace()
        .skip_while(|w| *w != "ns_per_iteration")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected forkloop output {out:?}"))
}

/// `hook_rounds` rounds of both loops.
pub fn loops(ctx: &Ctx, label: &str) -> Result<Loops> {
    let mut l = Loops::default();
    let n = ctx.cfg.fork_iterations;
    for round in 0..ctx.cfg.hook_rounds {
        let exit = one(ctx, "exit", n)?;
        let exec = one(ctx, "exec", n)?;
        ctx.say(format!(
            "  {label} round {}: fork+exit {:.1} us, fork+exec+exit {:.1} us per iteration",
            round + 1,
            exit / 1000.0,
            exec / 1000.0
        ));
        l.exit_ns.push(exit);
        l.exec_ns.push(exec);
    }
    Ok(l)
}

/// Pin every thread of `pid` to `cpus` (a taskset list).
fn pin(pid: i32, cpus: &str) -> Result<()> {
    crate::setup::output(
        Command::new("taskset")
            .args(["-a", "-p", "-c", cpus])
            .arg(pid.to_string()),
    )
    .map(|_| ())
}

pub fn with_daemon(ctx: &Ctx, d: &Daemon) -> Result<WithDaemon> {
    let all = format!("0-{}", cores() - 1);
    let pinned = match loop_core() {
        Some(c) => {
            let others = if c == 1 {
                "0".to_string()
            } else {
                format!("0-{}", c - 1)
            };
            pin(d.pid(), &others)?;
            format!("loop on CPU {c}, daemon on CPU {others}")
        }
        None => "one core: nothing pinned".to_string(),
    };
    let result = (|| {
        let loops = loops(ctx, "B (daemon)")?;
        // Stats on only for these extra loops: the accounting itself costs time per run.
        let stats_iterations = (ctx.cfg.fork_iterations / 5).max(1000);
        let mut bpftrace = start_bpftrace(ctx)?;
        let (progs, reference, exit_bpf_ns, exec_bpf_ns) = {
            let _stats = sys::Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1")?;
            let (s0, r0) = (prog_stats(d.pid())?, prog_stats(bpftrace.pid())?);
            one(ctx, "exit", stats_iterations)?;
            let s1 = prog_stats(d.pid())?;
            one(ctx, "exec", stats_iterations)?;
            let (s2, r2) = (prog_stats(d.pid())?, prog_stats(bpftrace.pid())?);
            let per_iteration =
                |a: &[ProgStat], b: &[ProgStat]| total_ns(b, a) / stats_iterations as f64;
            (
                delta(&s2, &s0),
                delta(&r2, &r0),
                per_iteration(&s0, &s1),
                per_iteration(&s1, &s2),
            )
        };
        bpftrace.stop(Duration::from_secs(10));
        Ok(WithDaemon {
            loops,
            progs,
            reference,
            stats_iterations,
            exit_bpf_ns,
            exec_bpf_ns,
            pinned: pinned.clone(),
        })
    })();
    if loop_core().is_some() {
        pin(d.pid(), &all)?;
    }
    result
}

/// bpftrace running `BPFTRACE_SCRIPT`, once it says its probes are attached.
fn start_bpftrace(ctx: &Ctx) -> Result<Proc> {
    let script = ctx.tmp.join("one-lookup.bt");
    std::fs::write(&script, BPFTRACE_SCRIPT).context("writing the bpftrace script")?;
    let mut cmd = Command::new("bpftrace");
    cmd.arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut proc = Proc::spawn("bpftrace", &mut cmd)?;
    let stdout = proc.child.stdout.take().context("bpftrace's stdout")?;
    // "Attaching 4 probes..." comes once every program is loaded and attached.
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading bpftrace's output")?;
    if !line.starts_with("Attaching") {
        bail!("bpftrace did not attach its probes: {line:?}");
    }
    Ok(proc)
}

/// Tracepoint names of the programs attached through perf events (bpftrace's), by program id:
/// bpftool's program names are cut at 15 bytes, which makes exec and exit the same.
fn perf_tracepoints() -> std::collections::HashMap<u64, String> {
    crate::setup::output(Command::new("bpftool").args(["perf", "show", "--json"]))
        .ok()
        .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some((
                p["prog_id"].as_u64()?,
                p["tracepoint"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The BPF programs a process holds, with their statistics: from /proc/<pid>/fdinfo of its
/// `bpf-prog` descriptors (which count per program, so other daemons on the host do not mix in),
/// named by the tracepoint they are attached to through a perf event, else by `bpftool prog
/// show id`.
fn prog_stats(pid: i32) -> Result<Vec<ProgStat>> {
    let tracepoints = perf_tracepoints();
    let mut progs = Vec::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?;
    for fd in fds.flatten() {
        let is_prog = std::fs::read_link(fd.path())
            .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        let Some(id) = field("prog_id:") else {
            continue;
        };
        if progs.iter().any(|p: &(u64, ProgStat)| p.0 == id) {
            continue;
        }
        let name = tracepoints.get(&id).cloned();
        let name = name.or_else(|| {
            crate::setup::output(Command::new("bpftool").args([
                "prog",
                "show",
                "id",
                &id.to_string(),
                "--json",
            ]))
            .ok()
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
            .and_then(|v| v["name"].as_str().map(str::to_string))
        });
        let name = name.unwrap_or_else(|| format!("prog {id}"));
        progs.push((
            id,
            ProgStat {
                name,
                run_cnt: field("run_cnt:").unwrap_or(0),
                run_time_ns: field("run_time_ns:").unwrap_or(0),
            },
        ));
    }
    if progs.is_empty() {
        bail!("process {pid} holds no BPF program descriptor");
    }
    progs.sort_by_key(|p| p.0);
    Ok(progs.into_iter().map(|p| p.1).collect())
}

/// Per program, `after` minus `before` (programs matched by name).
fn delta(after: &[ProgStat], before: &[ProgStat]) -> Vec<ProgStat> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.name == a.name);
            ProgStat {
                name: a.name.clone(),
                run_cnt: a.run_cnt - b.map_or(0, |b| b.run_cnt.min(a.run_cnt)),
                run_time_ns: a.run_time_ns - b.map_or(0, |b| b.run_time_ns.min(a.run_time_ns)),
            }
        })
        .collect()
}

fn total_ns(after: &[ProgStat], before: &[ProgStat]) -> f64 {
    delta(after, before)
        .iter()
        .map(|p| p.run_time_ns as f64)
        .sum()
}

/// B against A before and after: the slowdown in percent, medians over all A rounds.
pub fn slowdown(a1: &Loops, b: &Loops, a2: &Loops, exec: bool) -> (Spread, Spread, f64) {
    let pick = |l: &Loops| {
        if exec {
            l.exec_ns.clone()
        } else {
            l.exit_ns.clone()
        }
    };
    let mut a = pick(a1);
    a.extend(pick(a2));
    let sa = Spread::of(&a);
    let sb = Spread::of(&pick(b));
    (sa, sb, (sb.median / sa.median - 1.0) * 100.0)
}

/// ns per run of the program named `name` in `stats`.
pub fn ns_per_run(stats: &[ProgStat], name: &str) -> Option<f64> {
    stats
        .iter()
        .find(|p| p.name == name && p.run_cnt > 0)
        .map(|p| p.run_time_ns as f64 / p.run_cnt as f64)
}
