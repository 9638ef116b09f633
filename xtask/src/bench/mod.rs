//! `cargo xtask bench`: what the daemon costs a node, measured side by side with its peer
//! (Pushgateway 1.5.1, which the Go Apptheus serves its metrics through) or with a floor (a
//! minimal C program doing only the unavoidable work), in one run. Writes docs/benchmarks.md,
//! docs/benchmarks.json and the summary between the bench markers of README.md.
//!
//! Phases, in order (each one's module says how it measures):
//! 1. hook loops before the daemon starts (hooks, "A"),
//! 2. daemon start, idle memory; N containers admitted (admission time), memory at N,
//! 3. sampling cost against the C floor (sampling), no scrapes,
//! 4. scrapes of ours and of Pushgateway holding the same series (scrape),
//! 5. hook loops with the daemon tracking N containers ("B") and the BPF run-time statistics,
//! 6. all N ended at once (ended latency), retention passes, memory after,
//! 7. lifecycle latency over a smaller set (lifecycle),
//! 8. daemon stopped, hook loops again ("A" again),
//! 9. the scale curve: for each N (100, 1,000, 10,000), a fresh daemon and N light launchers
//!    (curve), then the report and its plots (plot).
mod curve;
mod hooks;
mod lifecycle;
mod plot;
mod report;
mod sampling;
mod scrape;
pub mod soak;
mod sys;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use report::{Report, Row};
use sys::{Container, Proc};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Live containers for the main scenarios (default 1000; 50 with --quick).
    #[arg(long)]
    containers: Option<usize>,
    /// A short run for development (50 containers, short phases); writes to target/bench-quick
    /// instead of docs/ and README.md.
    #[arg(long)]
    quick: bool,
    /// The scale curve's numbers of live containers, comma-separated (default 100,1000,10000;
    /// 20,50,100 with --quick or --curve-only); `none` skips the curve.
    #[arg(long)]
    curve: Option<String>,
    /// Only the scale curve (no hook loops, Pushgateway or lifecycle phases at N): for
    /// development; writes to target/bench-quick.
    #[arg(long)]
    curve_only: bool,
    /// The sampling window of every N, s (default 60 at the 1,000 of the main scenarios, 40
    /// on the curve; 10 with --quick or --curve-only): longer for steadier figures.
    #[arg(long, value_name = "SECONDS")]
    sampling_secs: Option<u64>,
}

/// How long and how much each phase does.
struct Config {
    containers: usize,
    interval_ms: u64,
    retention_s: u64,
    wrk_secs: u64,
    wrk_reps: usize,
    sampling_secs: u64,
    fork_iterations: u64,
    hook_rounds: usize,
    lifecycle: usize,
    quick: bool,
    /// The scale curve: its Ns, sampling window and lifecycle containers per N.
    curve: Vec<usize>,
    curve_sampling_secs: u64,
    curve_lifecycle: usize,
    curve_only: bool,
}

impl Config {
    fn new(args: &BenchArgs) -> Result<Config> {
        let quick = args.quick || args.curve_only;
        let curve = match args.curve.as_deref() {
            None if quick => vec![20, 50, 100],
            None => vec![100, 1000, 10_000],
            Some("none") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|n| n.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--curve {list:?}: expected numbers, comma-separated"))?,
        };
        let mut c = Config::phases(args);
        if let Some(secs) = args.sampling_secs {
            c.sampling_secs = secs;
            c.curve_sampling_secs = secs;
        }
        c.curve = curve;
        c.curve_only = args.curve_only;
        Ok(c)
    }

    fn phases(args: &BenchArgs) -> Config {
        if args.quick || args.curve_only {
            Config {
                containers: args.containers.unwrap_or(50),
                interval_ms: 500,
                retention_s: 5,
                wrk_secs: 3,
                wrk_reps: 1,
                sampling_secs: 10,
                fork_iterations: 5_000,
                hook_rounds: 1,
                lifecycle: 20,
                quick: true,
                curve: Vec::new(),
                curve_sampling_secs: 10,
                curve_lifecycle: 10,
                curve_only: false,
            }
        } else {
            Config {
                containers: args.containers.unwrap_or(1000),
                interval_ms: 500,
                retention_s: 10,
                wrk_secs: 10,
                wrk_reps: 2,
                sampling_secs: 60,
                fork_iterations: 50_000,
                hook_rounds: 2,
                lifecycle: 200,
                quick: false,
                curve: Vec::new(),
                curve_sampling_secs: 40,
                curve_lifecycle: 20,
                curve_only: false,
            }
        }
    }
}

/// What every phase needs: paths, the bench's cgroup parent name, the configuration.
pub struct Ctx {
    cfg: Config,
    release: PathBuf,
    tmp: PathBuf,
    parent: String,
    started: Instant,
    /// The open file limit the bench and its daemons run with.
    nofile: u64,
}

impl Ctx {
    fn say(&self, msg: impl AsRef<str>) {
        let t = self.started.elapsed().as_secs();
        println!("bench [{:02}:{:02}] {}", t / 60, t % 60, msg.as_ref());
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }
}

/// Removes the bench's temporary directory (socket, logs, C binaries) when dropped.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon under test: release build, its own socket, port and cgroup parent.
pub struct Daemon {
    proc: Proc,
    port: u16,
    socket: PathBuf,
    log: PathBuf,
    agent: ureq::Agent,
}

impl Daemon {
    fn start(ctx: &Ctx) -> Result<Daemon> {
        Daemon::start_for(ctx, ctx.cfg.containers + ctx.cfg.lifecycle, true)
    }

    /// A daemon with room for `containers` live at once, all of one user (root) and admitted
    /// as fast as they come: the limits that protect a shared host from one user are raised
    /// past what the bench starts.
    /// Without `network`, the network collector is off (its programs are not attached: two
    /// descriptors less per container).
    fn start_for(ctx: &Ctx, containers: usize, network: bool) -> Result<Daemon> {
        Daemon::start_with(ctx, containers, network, &[])
    }

    /// `start_for` with `extra` flags (the soak's summary file).
    fn start_with(ctx: &Ctx, containers: usize, network: bool, extra: &[String]) -> Result<Daemon> {
        let port = sys::free_port()?;
        let socket = ctx.tmp.join("gateway.sock");
        let log = ctx.tmp.join("apptheus.log");
        let exec = ctx.release.join("apptheus-exec");
        let room = (containers + 64).max(4096);
        let mut cmd = Command::new(ctx.release.join("apptheus"));
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--socket.path={}", socket.display()))
            .arg(format!(
                "--trust.path={};{}",
                exec.display(),
                ctx.bin("launcher").display()
            ))
            .arg(format!("--cgroup.parent={}", ctx.parent))
            .arg(format!("--monitor.interval={}ms", ctx.cfg.interval_ms))
            .arg(format!("--container.retention={}s", ctx.cfg.retention_s))
            .arg(format!("--state.dir={}", ctx.tmp.join("state").display()))
            // More than the bench's containers, so that none is refused for a limit.
            .arg(format!("--gateway.max-containers={room}"))
            .arg(format!("--gateway.max-containers-per-user={room}"))
            .arg(format!("--container.max-retained={room}"))
            .arg(format!("--container.max-retained-per-user={room}"))
            .arg("--gateway.admission-rate-per-user=100000")
            .arg(format!("--gateway.admission-burst-per-user={room}"))
            // Two processes per container (launcher and child), with room to spare.
            .arg(format!(
                "--tracker.max-processes={}",
                (4 * room).max(131_072)
            ))
            .args((!network).then_some("--collector.disable=network"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating the daemon's log")?);
        let proc = Proc::spawn("apptheus", &mut cmd)?;
        let mut d = Daemon {
            proc,
            port,
            socket,
            log,
            agent: sys::agent(),
        };
        let ready = sys::eventually(Duration::from_secs(60), Duration::from_millis(50), || {
            if let Some(st) = d.proc.exited() {
                bail!("apptheus exited at start ({st}):\n{}", d.log_tail());
            }
            Ok(sys::get(&d.agent, &d.url("/-/ready"), false)
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })?;
        if ready.is_none() {
            bail!("apptheus not ready after 60 s:\n{}", d.log_tail());
        }
        Ok(d)
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn metrics(&self) -> Result<String> {
        sys::get_text(&self.agent, &self.url("/metrics"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A launcher `apptheus-exec --socket <ours> -- sleep infinity`.
    fn launch(&self, ctx: &Ctx) -> Result<Container> {
        let mut cmd = Command::new(ctx.release.join("apptheus-exec"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(["--", "sleep", "infinity"]);
        Container::spawn("apptheus-exec", &mut cmd)
    }

    /// A light launcher (xtask/bench/launcher.c) and its sleeping child.
    fn launch_light(&self, ctx: &Ctx) -> Result<Container> {
        let mut cmd = Command::new(ctx.bin("launcher"));
        cmd.arg(&self.socket);
        Container::spawn("launcher", &mut cmd)
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the bench loads eBPF programs, creates cgroups and reads every process's /proc: run `cargo xtask bench` as root"
        );
    }
    let cfg = Config::new(&args)?;
    let started = Instant::now();
    crate::setup::build_deps()?;
    crate::setup::bench_deps()?;
    println!("bench: building the release daemon");
    crate::build(true)?;
    let root = crate::workspace_root();
    let tmp = PathBuf::from(format!("/tmp/apptheus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let _tmp_guard = TmpDir(tmp.clone());
    // 10,000 containers hold a launcher connection and network links each in the daemon:
    // more descriptors than a login shell's limit. Raised for the bench and what it starts.
    let nofile = sys::raise_nofile(1 << 20)?;
    let ctx = Ctx {
        release: crate::target_dir(true),
        parent: format!("apptheus-bench-{}", std::process::id()),
        tmp,
        cfg,
        started,
        nofile,
    };
    for c in ["forkloop", "floor", "launcher"] {
        let src = root.join("xtask/bench").join(format!("{c}.c"));
        crate::status(
            Command::new("gcc")
                .args(["-O2", "-Wall", "-o"])
                .arg(ctx.bin(c))
                .arg(&src),
        )
        .with_context(|| format!("compiling {}", src.display()))?;
    }
    // Every cgroup the bench's daemon makes is below this name: removed at the end, even after
    // a failure.
    let _cgroups = sys::CgroupGuard(ctx.parent.clone());
    let mut report = Report::new(&ctx)?;
    ctx.say(format!(
        "machine: {}; open file limit {nofile}",
        report.machine
    ));
    let mut result = if ctx.cfg.curve_only {
        Ok(())
    } else {
        phases(&ctx, &mut report)
    };
    if let Err(e) = &result {
        report.note(format!("The run failed: {e:#}"));
    }
    if !ctx.cfg.curve.is_empty() {
        let (points, curve_result) = curve::run(&ctx);
        if let Err(e) = &curve_result {
            // The first line of each cause: the daemon's log tail stays on the terminal.
            let why: Vec<String> = e
                .chain()
                .filter_map(|c| c.to_string().lines().next().map(str::to_string))
                .collect();
            eprintln!("bench: the scale curve stopped: {e:#}");
            report.note(format!("The scale curve stopped: {}", why.join(": ")));
        }
        let out = if ctx.cfg.quick {
            root.join("target/bench-quick")
        } else {
            root.join("docs")
        };
        report.curve(&points, &out);
        result = result.and(curve_result);
    }
    let out = if ctx.cfg.quick {
        root.join("target/bench-quick")
    } else {
        root.join("docs")
    };
    report.write(&out, !ctx.cfg.quick)?;
    ctx.say(format!("wrote {}", out.join("benchmarks.md").display()));
    result
}

fn phases(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.cfg.containers;
    ctx.say("hook cost, A (no daemon): fork loops");
    let a1 = hooks::loops(ctx, "A (before)")?;

    ctx.say("starting the daemon");
    let mut daemon = Daemon::start(ctx)?;
    std::thread::sleep(Duration::from_millis(4 * ctx.cfg.interval_ms));
    let rss_idle = sys::rss_mib(daemon.pid())?;
    ctx.say(format!("idle RSS {rss_idle:.1} MiB"));

    ctx.say(format!("starting {n} containers"));
    let (mut containers, admission) = admit(ctx, &daemon, n)?;
    report.admission(&admission);
    // Steady state: sampled, and scraped once with gzip as Prometheus would.
    sys::get(&daemon.agent, &daemon.url("/metrics"), true)?;
    std::thread::sleep(Duration::from_millis(4 * ctx.cfg.interval_ms));
    let rss_full = sys::rss_mib(daemon.pid())?;
    ctx.say(format!("RSS at {n} containers {rss_full:.1} MiB"));

    ctx.say("sampling cost against the floor");
    let sampling = sampling::run(ctx, &daemon, ctx.cfg.sampling_secs, true)?;
    report.sampling(&sampling);

    ctx.say("scrapes: ours and Pushgateway's");
    let scrape = scrape::run(ctx, &daemon)?;
    report.scrape(&scrape);
    let rss_scraped = sys::rss_mib(daemon.pid())?;
    ctx.say(format!("RSS after the wrk runs {rss_scraped:.1} MiB"));

    ctx.say("hook cost, B (daemon tracking the containers)");
    let b = hooks::with_daemon(ctx, &daemon)?;

    ctx.say(format!("ending the {n} containers at once"));
    let mut ended = lifecycle::end_all(ctx, &daemon, &mut containers)?;
    drop(containers);
    let rss_after = lifecycle::wait_removed(ctx, &daemon)?;
    ended.leftover_cgroups = lifecycle::leftover_cgroups(ctx);

    ctx.say(format!(
        "lifecycle latency over {} containers",
        ctx.cfg.lifecycle
    ));
    let life = lifecycle::run(ctx, &daemon)?;
    report.lifecycle(&life, &ended);
    // A second cycle of containers come and gone: memory that stayed after the first cycle is
    // reused, not added to, unless something is left behind per container.
    let rss_after2 = lifecycle::wait_removed(ctx, &daemon)?;
    ended.leftover_cgroups += lifecycle::leftover_cgroups(ctx);
    report.memory(
        [rss_idle, rss_full, rss_scraped, rss_after, rss_after2],
        &ended,
    );

    ctx.say("stopping the daemon");
    let st = daemon.proc.stop(Duration::from_secs(20));
    if !st.is_some_and(|s| s.success()) {
        report.note(format!(
            "The daemon did not stop cleanly ({st:?}); its log ends:\n\n```\n{}\n```",
            daemon.log_tail()
        ));
    }
    ctx.say("hook cost, A again (daemon stopped)");
    let a2 = hooks::loops(ctx, "A (after)")?;
    report.hooks(&a1, &b, &a2);
    Ok(())
}

/// Admission of `n` containers: launchers started as fast as the bench can, each registered when
/// its `apptheus_container_start_time_seconds` says so.
pub struct Admission {
    n: usize,
    /// From the first launcher started to the last container registered.
    total_s: f64,
    /// Starting the launchers alone.
    spawn_s: f64,
    /// Per container: registration time minus its launcher's start.
    latency_ms: Vec<f64>,
    host_processes: usize,
}

fn admit(ctx: &Ctx, d: &Daemon, n: usize) -> Result<(Vec<Container>, Admission)> {
    admit_with(ctx, d, n, false)
}

/// Admission with apptheus-exec launchers, or `light` ones (launcher.c).
fn admit_with(ctx: &Ctx, d: &Daemon, n: usize, light: bool) -> Result<(Vec<Container>, Admission)> {
    let host_processes = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0);
    let t0 = SystemTime::now();
    let mut cs = Vec::with_capacity(n);
    for _ in 0..n {
        cs.push(if light {
            d.launch_light(ctx)?
        } else {
            d.launch(ctx)?
        });
    }
    let spawn_s = t0.elapsed().unwrap_or_default().as_secs_f64();
    ctx.say(format!(
        "{n} launchers started in {spawn_s:.1} s; waiting for their registration"
    ));
    let timeout = Duration::from_secs(60 + n as u64 / if light { 10 } else { 5 });
    let mut last_report = Instant::now();
    let starts = sys::eventually(timeout, Duration::from_millis(500), || {
        let text = d.metrics()?;
        let starts: std::collections::HashMap<String, f64> =
            sys::samples(&text, "apptheus_container_start_time_seconds")
                .into_iter()
                .filter_map(|(l, v)| Some((sys::label(l, "container")?.to_string(), v)))
                .collect();
        let live = sys::samples(&text, "apptheus_containers")
            .first()
            .map_or(0.0, |s| s.1);
        if last_report.elapsed() > Duration::from_secs(10) {
            ctx.say(format!("  {live} containers registered"));
            last_report = Instant::now();
        }
        Ok(
            (live as usize >= n && cs.iter().all(|c| starts.contains_key(&c.id())))
                .then_some(starts),
        )
    })?;
    let Some(starts) = starts else {
        let gone = cs.iter_mut().filter_map(|c| c.launcher.exited()).count();
        bail!(
            "not all {n} containers were registered within {timeout:?} ({gone} launchers exited); daemon log:\n{}",
            d.log_tail()
        );
    };
    let latency_ms: Vec<f64> = cs
        .iter()
        .map(|c| (starts[&c.id()] - sys::unix(c.spawned)) * 1000.0)
        .collect();
    let last = cs.iter().map(|c| starts[&c.id()]).fold(f64::MIN, f64::max);
    let total_s = last - sys::unix(t0);
    ctx.say(format!(
        "{n} containers registered {total_s:.1} s after the first launcher started"
    ));
    Ok((
        cs,
        Admission {
            n,
            total_s,
            spawn_s,
            latency_ms,
            host_processes,
        },
    ))
}

/// Now, as the reports date their runs.
fn report_date() -> String {
    crate::setup::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|d| d.trim().to_string())
        .unwrap_or_else(|_| "unknown date".into())
}

/// The machine line: CPU model, cores, memory, kernel, cgroup mode, load when the bench began.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "cgroup v2"
    } else if Path::new("/sys/fs/cgroup/unified").exists() {
        "cgroup hybrid (v1 + v2)"
    } else {
        "cgroup v1"
    };
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}, {cgroup}; load average {load} at start"
    )
}

pub fn fmt_pct(x: f64) -> String {
    format!("{x:.2}%")
}

pub fn row(
    scenario: &str,
    ours: String,
    peer: String,
    ratio: String,
    target: &str,
    met: Option<bool>,
) -> Row {
    Row {
        scenario: scenario.to_string(),
        ours,
        peer,
        ratio,
        target: target.to_string(),
        met,
        why: None,
    }
}
