//! `cargo xtask soak`: a node's worth of short jobs through one daemon, and what is left after.
//!
//! One daemon (the bench's flags: limits raised past what the soak starts, so none is refused;
//! a summary file; retention 5 s, so that ended containers are reaped during the churn), a real
//! Prometheus scraping it every second, and `--alive` soak launchers (xtask/bench/
//! soak-launcher.c) in flight at once until `--containers` have run or `--minutes` passed. Each
//! launcher waits until it is admitted, then its command runs a while and ends in one of five
//! ways: exit 0, exit 3, SIGTERM, an OOM kill in a job cgroup limited to 32 MiB (one of `--alive`/4 such jobs), a burst of 8
//! forks. `kernel.pid_max` is raised for the soak, so no container id (`<exe>_<pid>`) repeats
//! and each series in Prometheus is one container's.
//!
//! After the churn, once every container's series are gone: the daemon's RSS against its value
//! after the first 10,000 containers (a tenth of the run when it is shorter), its descriptors
//! against their idle count, container cgroups left, one summary record per container (every
//! line parsed, counted per id, the exit code as the launcher's), `resets()` of every container
//! counter family in Prometheus, the occupancy of the eBPF maps (bpftool, by map id from the
//! daemon's descriptors) against their idle occupancy, `apptheus_ebpf_events_lost_total`.
//! Fails, naming each bound missed. Figures and a plot of RSS and descriptors go to a section
//! of docs/benchmarks.md of its own (between the soak markers) and docs/soak.png.
use std::{
    collections::{BTreeMap, HashMap},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Config, Ctx, Daemon, TmpDir, lifecycle, plot, sys};

pub const BEGIN: &str = "<!-- soak:begin -->";
pub const END: &str = "<!-- soak:end -->";

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Containers to run in all.
    #[arg(long, default_value_t = 100_000)]
    containers: usize,
    /// The most minutes the churn may take (it stops there, and fails, if it is not done).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Containers alive at once.
    #[arg(long, default_value_t = 200)]
    alive: usize,
    /// Run the debug build (target/debug, built) instead of a release build.
    #[arg(long)]
    debug: bool,
    /// Write the figures to target/soak instead of docs/.
    #[arg(long)]
    quick: bool,
    /// Only redraw docs/soak.png from a soak's output (its readings every 30 s), e.g. of a run
    /// that stopped before writing its figures.
    #[arg(long, value_name = "LOG")]
    plot_from: Option<PathBuf>,
}

/// How each container ends, and the launcher's exit code for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Ok,
    Fail,
    Signal,
    Oom,
    Forks,
}

impl Kind {
    /// The mix, out of 20: 8 exit 0, 3 exit 3, 3 SIGTERM, 2 OOM kills, 4 fork bursts.
    fn of(i: usize) -> Kind {
        match i % 20 {
            0..=7 => Kind::Ok,
            8..=10 => Kind::Fail,
            11..=13 => Kind::Signal,
            14 | 15 => Kind::Oom,
            _ => Kind::Forks,
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Signal => "signal",
            Kind::Oom => "oom",
            Kind::Forks => "forks",
        }
    }

    fn code(self) -> i32 {
        match self {
            Kind::Ok | Kind::Forks => 0,
            Kind::Fail => 3,
            Kind::Signal => 128 + libc::SIGTERM,
            Kind::Oom => 128 + libc::SIGKILL,
        }
    }
}

struct Launch {
    id: String,
    kind: Kind,
    code: Option<i32>,
}

/// One reading of the daemon during the churn.
#[derive(Clone, Copy)]
struct Point {
    ended: usize,
    rss_mib: f64,
    fds: usize,
}

/// A bound and whether it was met.
struct Bound {
    name: String,
    value: String,
    met: bool,
}

/// Everything the soak measured.
#[derive(Default)]
struct Figures {
    containers: usize,
    churn_s: f64,
    alive_mean: f64,
    by_kind: BTreeMap<String, usize>,
    refused: usize,
    ref_at: usize,
    rss_ref: f64,
    rss_churn_end: f64,
    rss_max: f64,
    rss_end: f64,
    fds_idle: usize,
    fds_end: usize,
    fds_max: usize,
    leftover_cgroups: usize,
    parents_left: usize,
    /// Containers still exported after the drain (never marked ended).
    never_ended: Vec<String>,
    records: usize,
    torn: usize,
    missing: usize,
    duplicated: usize,
    code_mismatch: usize,
    oom_unseen: usize,
    reused_ids: usize,
    counter_series: u64,
    families: usize,
    resets: u64,
    maps_idle: BTreeMap<String, u64>,
    maps_end: BTreeMap<String, u64>,
    events_lost: f64,
    drain_s: f64,
}

pub fn run(args: SoakArgs) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the soak loads eBPF programs, creates cgroups and moves processes: run `cargo xtask soak` as root"
        );
    }
    if let Some(log) = &args.plot_from {
        return replot(log);
    }
    if args.containers == 0 || args.alive == 0 {
        bail!("--containers and --alive must be at least 1");
    }
    let started = Instant::now();
    crate::setup::build_deps()?;
    // bpftool (the maps' occupancy), gcc (the launcher), the plot's font.
    crate::setup::bench_deps()?;
    let release = !args.debug;
    println!(
        "soak: building the {} daemon",
        if release { "release" } else { "debug" }
    );
    if release {
        crate::build(true)?;
    } else {
        // The build the tests use (their examples' dev-dependencies unify features), so that
        // neither undoes the other's.
        crate::status(
            crate::cargo()
                .args(crate::CLIENT_AND_DAEMON)
                .arg("--examples"),
        )?;
    }
    let root = crate::workspace_root();
    let tmp = PathBuf::from(format!("/tmp/apptheus-soak-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let _tmp_guard = TmpDir(tmp.clone());
    let nofile = sys::raise_nofile(1 << 20)?;
    let ctx = Ctx {
        release: crate::target_dir(release),
        parent: format!("apptheus-soak-{}", std::process::id()),
        tmp,
        cfg: config(),
        started,
        nofile,
    };
    // The daemon trusts the bench's launcher path (`Daemon::start_with`): the soak's launcher
    // is built there, so container ids are `launcher_<pid>` as the bench's.
    let src = root.join("xtask/bench/soak-launcher.c");
    crate::status(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(ctx.bin("launcher"))
            .arg(&src),
    )
    .with_context(|| format!("compiling {}", src.display()))?;
    let _cgroups = sys::CgroupGuard(ctx.parent.clone());
    let jobs = Jobs::new(
        &format!("apptheus-soak-job-{}", std::process::id()),
        (args.alive / 4).max(1),
    )?;
    // Ids never repeat within the soak (see the module's comment): a few pids per container.
    let _pid_max = raise_pid_max(8 * args.containers + 65_536)?;
    let mut figures = Figures::default();
    let result = soak(&ctx, &args, &jobs, &mut figures);
    if let Err(e) = &result {
        eprintln!("soak: stopped: {e:#}");
        return result.map(|_| ());
    }
    let points = result?;
    let bounds = bounds(&args, &figures);
    let out = if args.quick {
        root.join("target/soak")
    } else {
        root.join("docs")
    };
    write(&ctx, &out, &args, &figures, &bounds, &points)?;
    let missed: Vec<&Bound> = bounds.iter().filter(|b| !b.met).collect();
    for b in &bounds {
        println!(
            "soak: {} {}: {}",
            if b.met { "met   " } else { "MISSED" },
            b.name,
            b.value
        );
    }
    if !missed.is_empty() {
        bail!(
            "the soak missed {}",
            missed
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

fn config() -> Config {
    Config {
        containers: 0,
        interval_ms: 500,
        // Ended containers are reaped during the churn, not all at its end.
        retention_s: 5,
        wrk_secs: 0,
        wrk_reps: 0,
        sampling_secs: 0,
        fork_iterations: 0,
        hook_rounds: 0,
        lifecycle: 0,
        quick: false,
        curve: Vec::new(),
        curve_sampling_secs: 0,
        curve_lifecycle: 0,
        curve_only: false,
    }
}

fn raise_pid_max(want: usize) -> Result<Option<sys::Sysctl>> {
    const PATH: &str = "/proc/sys/kernel/pid_max";
    // The kernel's largest on 64-bit machines.
    let want = want.min(4_194_304);
    let now: usize = std::fs::read_to_string(PATH)
        .context("reading pid_max")?
        .trim()
        .parse()
        .context("parsing pid_max")?;
    if now >= want {
        return Ok(None);
    }
    Ok(Some(sys::Sysctl::set(PATH, &want.to_string())?))
}

/// The batch jobs the OOM kinds start in: memory cgroups limited to 32 MiB each, swap
/// included (in the v1 memory hierarchy, or the unified tree on a pure v2 host). One job per
/// OOM container alive at once, give or take: several commands filling one job's limit together
/// thrash on its reclaim for seconds before the OOM killer picks one. Removed when dropped.
struct Jobs {
    dirs: Vec<PathBuf>,
}

impl Jobs {
    fn new(name: &str, n: usize) -> Result<Jobs> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let base = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/memory")
        };
        let mut jobs = Jobs { dirs: Vec::new() };
        let limit = (32u64 << 20).to_string();
        let files: &[(&str, &str)] = if v2 {
            &[("memory.max", &limit), ("memory.swap.max", "0")]
        } else {
            &[
                ("memory.limit_in_bytes", &limit),
                ("memory.memsw.limit_in_bytes", &limit),
            ]
        };
        for i in 0..n {
            let dir = base.join(format!("{name}-{i}"));
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            jobs.dirs.push(dir.clone());
            for (file, value) in files {
                let path = dir.join(file);
                // Swap accounting may be off (no memsw or swap.max file): the limit alone holds.
                if path.exists() {
                    std::fs::write(&path, value)
                        .with_context(|| format!("writing {value} to {}", path.display()))?;
                }
            }
        }
        Ok(jobs)
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        let _ = sys::eventually(Duration::from_secs(10), Duration::from_millis(100), || {
            self.dirs.iter().for_each(|d| sys::remove_cgroup_tree(d));
            Ok(self.dirs.iter().all(|d| !d.exists()).then_some(()))
        });
        for d in self.dirs.iter().filter(|d| d.exists()) {
            eprintln!("soak: could not remove {}", d.display());
        }
    }
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |rd| rd.count())
}

/// The churn and the checks after it; the readings over the churn.
fn soak(ctx: &Ctx, args: &SoakArgs, jobs: &Jobs, f: &mut Figures) -> Result<Vec<Point>> {
    let summary = ctx.tmp.join("summary.jsonl");
    let room = 4 * args.alive + 1024;
    let mut daemon = Daemon::start_with(
        ctx,
        room,
        true,
        &[format!("--container.summary-file={}", summary.display())],
    )?;
    let prom = Prometheus::start(ctx, &daemon.url(""))?;
    ctx.say(format!(
        "daemon {} and Prometheus {} up",
        daemon.pid(),
        prom.url
    ));
    // Idle: the daemon's own descriptors and maps, after a few passes.
    std::thread::sleep(Duration::from_millis(4 * ctx.cfg.interval_ms));
    f.fds_idle = fds(daemon.pid());
    f.maps_idle = maps::occupancy(daemon.pid())?;
    ctx.say(format!(
        "idle: RSS {:.1} MiB, {} descriptors, maps {:?}",
        sys::rss_mib(daemon.pid())?,
        f.fds_idle,
        f.maps_idle
    ));

    let n = args.containers;
    f.ref_at = 10_000.min(n / 10).max(1);
    let deadline = Duration::from_secs(args.minutes * 60);
    // The command's hold, so that `alive` in flight make `containers` in about 80% of the time
    // allowed (admission and exit take the rest); spread ±50% so that ends do not come in step.
    let hold_ms = (args.alive as u64 * deadline.as_millis() as u64 / n as u64 * 8 / 10).max(1);
    ctx.say(format!(
        "churn: {n} containers, {} alive, commands held {hold_ms} ms on average, at most {} min",
        args.alive, args.minutes
    ));
    let exe = ctx.bin("launcher");
    let socket = daemon.socket.clone();
    let mut launches: Vec<Launch> = Vec::with_capacity(n);
    let mut flight: Vec<(usize, Child)> = Vec::with_capacity(args.alive);
    let mut points = Vec::new();
    let mut families: Vec<String> = Vec::new();
    let (mut ended, mut alive_sum, mut alive_n) = (0usize, 0f64, 0u64);
    let t0 = Instant::now();
    let mut next_point = Duration::ZERO;
    let mut last_say = Instant::now();
    loop {
        let late = t0.elapsed() >= deadline;
        while !late && flight.len() < args.alive && launches.len() < n {
            let i = launches.len();
            let kind = Kind::of(i);
            let hold = hold_ms / 2 + (i as u64).wrapping_mul(7919) % hold_ms.max(1);
            let mut cmd = Command::new(&exe);
            cmd.arg(&socket).arg(kind.arg()).arg(hold.to_string());
            if kind == Kind::Oom {
                // The OOM kinds alive at once are consecutive ones: in different jobs.
                cmd.arg(&jobs.dirs[(i / 20) % jobs.dirs.len()]);
            }
            let child = sys::quiet(&mut cmd)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            launches.push(Launch {
                id: format!("launcher_{}", child.id()),
                kind,
                code: None,
            });
            flight.push((i, child));
        }
        let before = flight.len();
        flight.retain_mut(|(i, c)| match c.try_wait() {
            Ok(Some(st)) => {
                // Signal N as the shell shows it, 128+N: a launcher the OOM killer took (it is
                // in the job too) ends its container as its command would have.
                launches[*i].code =
                    Some(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
                false
            }
            _ => true,
        });
        ended += before - flight.len();
        alive_sum += flight.len() as f64;
        alive_n += 1;
        if f.rss_ref == 0.0 && ended >= f.ref_at {
            f.rss_ref = sys::rss_mib(daemon.pid())?;
            ctx.say(format!(
                "RSS after the first {} containers: {:.1} MiB",
                f.ref_at, f.rss_ref
            ));
            // The counter families, from a page that holds many containers.
            families = counter_families(&daemon.metrics()?);
        }
        if t0.elapsed() >= next_point {
            points.push(Point {
                ended,
                rss_mib: sys::rss_mib(daemon.pid())?,
                fds: fds(daemon.pid()),
            });
            next_point += Duration::from_secs(1);
        }
        if last_say.elapsed() >= Duration::from_secs(30) {
            let p = points.last().copied();
            ctx.say(format!(
                "  {ended} ended, {} in flight, {:.0}/s; RSS {:.1} MiB, {} descriptors",
                flight.len(),
                ended as f64 / t0.elapsed().as_secs_f64(),
                p.map_or(0.0, |p| p.rss_mib),
                p.map_or(0, |p| p.fds)
            ));
            last_say = Instant::now();
        }
        if flight.is_empty() && (late || launches.len() >= n) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f.churn_s = t0.elapsed().as_secs_f64();
    f.containers = launches.len();
    f.alive_mean = alive_sum / alive_n.max(1) as f64;
    f.rss_churn_end = sys::rss_mib(daemon.pid())?;
    f.rss_max = points
        .iter()
        .filter(|p| p.ended >= f.ref_at)
        .map(|p| p.rss_mib)
        .fold(f.rss_churn_end, f64::max);
    f.fds_max = points.iter().map(|p| p.fds).max().unwrap_or(0);
    for l in &launches {
        *f.by_kind.entry(l.kind.arg().to_string()).or_default() += 1;
    }
    f.refused = launches
        .iter()
        .filter(|l| l.code.is_some_and(|c| (120..=122).contains(&c)))
        .count();
    ctx.say(format!(
        "churn done: {} containers in {:.0} s ({:.1}/s), {:.0} in flight on average, {} not admitted",
        f.containers,
        f.churn_s,
        f.containers as f64 / f.churn_s,
        f.alive_mean,
        f.refused
    ));
    if families.is_empty() {
        families = counter_families(&daemon.metrics()?);
    }

    // Drained: every series gone after the retention, then a few passes.
    let t_drain = Instant::now();
    // A container never marked ended keeps its series: a finding, counted; the checks go on.
    if let Err(e) = lifecycle::wait_removed(ctx, &daemon) {
        let text = daemon.metrics()?;
        f.never_ended = sys::samples(&text, "apptheus_container_info")
            .iter()
            .filter_map(|(l, _)| sys::label(l, "container").map(str::to_string))
            .collect();
        ctx.say(format!("{e:#}: {:?}", f.never_ended));
    }
    f.drain_s = t_drain.elapsed().as_secs_f64();
    f.rss_end = sys::rss_mib(daemon.pid())?;
    // Launcher connections close as the daemon notices: wait for the idle count a while.
    let idle = f.fds_idle;
    let back = sys::eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        Ok((fds(daemon.pid()) <= idle).then_some(()))
    })?;
    f.fds_end = fds(daemon.pid());
    if back.is_none() {
        ctx.say(format!(
            "descriptors still {} (idle {idle}) 60 s after the drain: {:?}",
            f.fds_end,
            fd_kinds(daemon.pid())
        ));
    }
    f.leftover_cgroups = lifecycle::leftover_cgroups(ctx);
    let maps_idle = f.maps_idle.clone();
    let mut maps_end = maps::occupancy(daemon.pid())?;
    // Entries of ended containers are removed with their retention: wait for that a while.
    if maps_end != maps_idle {
        let _ = sys::eventually(Duration::from_secs(30), Duration::from_millis(500), || {
            maps_end = maps::occupancy(daemon.pid())?;
            Ok((maps_end == maps_idle).then_some(()))
        })?;
    }
    f.maps_end = maps_end;
    let text = daemon.metrics()?;
    f.events_lost = sys::samples(&text, "apptheus_ebpf_events_lost_total")
        .iter()
        .map(|s| s.1)
        .sum();
    records(&summary, &launches, f)?;
    // Prometheus has scraped the drained daemon: every container's last samples are in.
    let range = format!("{}s", (t0.elapsed().as_secs() + 120));
    f.families = families.len();
    let reused = reused(&launches);
    for fam in &families {
        let (series, resets) = prom.resets(fam, &range, &reused)?;
        f.counter_series += series;
        f.resets += resets;
    }
    ctx.say(format!(
        "after: RSS {:.1} MiB (after {} containers {:.1}), {} descriptors (idle {}), {} cgroups left, {} records ({} missing, {} duplicated, {} torn), resets {} over {} series, events lost {}",
        f.rss_end,
        f.ref_at,
        f.rss_ref,
        f.fds_end,
        f.fds_idle,
        f.leftover_cgroups,
        f.records,
        f.missing,
        f.duplicated,
        f.torn,
        f.resets,
        f.counter_series,
        f.events_lost
    ));
    drop(prom);
    let st = daemon.proc.stop(Duration::from_secs(30));
    if !st.is_some_and(|s| s.success()) {
        ctx.say(format!(
            "the daemon did not stop cleanly ({st:?}); its log ends:\n{}",
            daemon.log_tail()
        ));
    }
    // What the daemon leaves of its own at exit (its parent directories).
    f.parents_left = sys::cgroup_dirs(&ctx.parent).len();
    Ok(points)
}

/// The daemon's descriptors by kind (socket, anon_inode:bpf-map, a path's directory...).
fn fd_kinds(pid: i32) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let kind = match target.split_once(':') {
            Some((k, _)) if !target.starts_with('/') => k.to_string(),
            _ => Path::new(&target)
                .parent()
                .map_or(target.clone(), |p| p.display().to_string()),
        };
        *out.entry(kind).or_default() += 1;
    }
    out
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

/// Ids that more than one launcher had (a pid reused within the soak despite pid_max).
fn reused(launches: &[Launch]) -> Vec<String> {
    let mut n: HashMap<&str, usize> = HashMap::new();
    for l in launches {
        *n.entry(&l.id).or_default() += 1;
    }
    n.into_iter()
        .filter(|(_, k)| *k > 1)
        .map(|(id, _)| id.to_string())
        .collect()
}

/// Counts the summary records per container id against the admitted launchers.
fn records(path: &Path, launches: &[Launch], f: &mut Figures) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // id -> (start time, exit code, OOM kills) of each record.
    let mut by_id: HashMap<String, Vec<(f64, Option<i64>, u64)>> = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            f.torn += 1;
            continue;
        };
        let Some(id) = v["container"].as_str() else {
            f.torn += 1;
            continue;
        };
        f.records += 1;
        by_id.entry(id.to_string()).or_default().push((
            v["start_time_seconds"].as_f64().unwrap_or(0.0),
            v["exit_code"].as_i64(),
            v["oom_kills"].as_u64().unwrap_or(0),
        ));
    }
    let mut expected: HashMap<&str, Vec<&Launch>> = HashMap::new();
    for l in launches {
        if l.code.is_some_and(|c| !(120..=122).contains(&c)) {
            expected.entry(&l.id).or_default().push(l);
        }
    }
    f.reused_ids = reused(launches).len();
    for (id, ls) in &expected {
        let mut rs = by_id.remove(*id).unwrap_or_default();
        rs.sort_by(|a, b| a.0.total_cmp(&b.0));
        f.missing += ls.len().saturating_sub(rs.len());
        f.duplicated += rs.len().saturating_sub(ls.len());
        // In launch order (a reused id's launches were started one after the other).
        for (l, r) in ls.iter().zip(&rs) {
            if r.1 != l.code.map(i64::from) || l.code != Some(l.kind.code()) {
                f.code_mismatch += 1;
            }
            if l.kind == Kind::Oom && r.2 == 0 {
                f.oom_unseen += 1;
            }
        }
    }
    // Records of no launcher of ours.
    f.duplicated += by_id.values().map(Vec::len).sum::<usize>();
    Ok(())
}

fn bounds(args: &SoakArgs, f: &Figures) -> Vec<Bound> {
    let b = |name: String, value: String, met: bool| Bound { name, value, met };
    // OOM_VICTIM_TIDS is left out: it takes every OOM victim on the host (an LRU map, whose
    // entries for processes the daemon does not track are evicted, never removed).
    let tracked = |m: &BTreeMap<String, u64>| {
        let mut m = m.clone();
        m.remove("OOM_VICTIM_TIDS");
        m
    };
    let maps_back = tracked(&f.maps_end) == tracked(&f.maps_idle) && !f.maps_idle.is_empty();
    vec![
        b(
            format!("at least {} containers", args.containers),
            format!("{} ({:?})", f.containers, f.by_kind),
            f.containers >= args.containers,
        ),
        b(
            format!("within {} minutes", args.minutes),
            format!(
                "{:.1} min, {:.1} containers/s, {:.0} alive on average",
                f.churn_s / 60.0,
                f.containers as f64 / f.churn_s.max(1e-9),
                f.alive_mean
            ),
            f.churn_s <= args.minutes as f64 * 60.0 && f.containers >= args.containers,
        ),
        b(
            "every launcher admitted".into(),
            format!("{} not admitted", f.refused),
            f.refused == 0,
        ),
        b(
            format!(
                "RSS within +2 MiB of its value after the first {}",
                f.ref_at
            ),
            format!(
                "{:.1} MiB after {}, {:.1} at the churn's end, {:.1} drained (max {:.1} after the first {})",
                f.rss_ref, f.ref_at, f.rss_churn_end, f.rss_end, f.rss_max, f.ref_at
            ),
            // After the soak, as the issue asks: at the churn's end the containers held (alive,
            // being admitted, retained) depend on the rate of the moment, so that reading is
            // shown, not bounded.
            f.rss_end <= f.rss_ref + 2.0,
        ),
        b(
            "every container marked ended".into(),
            format!(
                "{} still live after the drain {:?}",
                f.never_ended.len(),
                f.never_ended
            ),
            f.never_ended.is_empty(),
        ),
        b(
            "descriptors back to their baseline".into(),
            format!(
                "{} drained, {} idle before (max {} during the churn)",
                f.fds_end, f.fds_idle, f.fds_max
            ),
            f.fds_end <= f.fds_idle,
        ),
        b(
            "no cgroup left".into(),
            format!(
                "{} container cgroups with the daemon up; {} of its parent directories after it stopped",
                f.leftover_cgroups, f.parents_left
            ),
            f.leftover_cgroups == 0,
        ),
        b(
            "one summary record per container".into(),
            format!(
                "{} records for {} containers: {} missing, {} duplicated, {} torn",
                f.records,
                f.containers - f.refused,
                f.missing,
                f.duplicated,
                f.torn
            ),
            f.missing == 0 && f.duplicated == 0 && f.torn == 0,
        ),
        b(
            "records' exit codes are the launchers'".into(),
            format!(
                "{} differ; {} OOM-killed containers without an OOM kill counted",
                f.code_mismatch, f.oom_unseen
            ),
            f.code_mismatch == 0 && f.oom_unseen == 0,
        ),
        b(
            "no container counter decreases in Prometheus (resets() 0)".into(),
            format!(
                "{} resets over {} series of {} counter families ({} ids reused, left out)",
                f.resets, f.counter_series, f.families, f.reused_ids
            ),
            f.resets == 0 && f.counter_series > 0,
        ),
        b(
            "eBPF maps back to their idle occupancy".into(),
            format!(
                "{:?} drained, {:?} idle (OOM_VICTIM_TIDS: host-wide, not compared)",
                f.maps_end, f.maps_idle
            ),
            maps_back,
        ),
    ]
}

/// The readings of a soak's output (`  N ended, ... RSS X MiB, Y descriptors`), drawn.
fn replot(log: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let points: Vec<Point> = text
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("] ")?;
            let ended = rest.trim().split_once(" ended,")?.0.parse().ok()?;
            let (_, rss) = rest.split_once("RSS ")?;
            let (rss, fds) = rss.split_once(" MiB, ")?;
            Some(Point {
                ended,
                rss_mib: rss.parse().ok()?,
                fds: fds.split_whitespace().next()?.parse().ok()?,
            })
        })
        .collect();
    if points.is_empty() {
        bail!("no readings in {}", log.display());
    }
    let png = crate::workspace_root().join("docs/soak.png");
    draw(&png, &points)?;
    println!(
        "soak: drew {} readings into {}",
        points.len(),
        png.display()
    );
    Ok(())
}

fn draw(png: &Path, points: &[Point]) -> Result<()> {
    let series = |g: fn(&Point) -> f64| -> Vec<(f64, f64)> {
        points.iter().map(|p| (p.ended as f64, g(p))).collect()
    };
    plot::timeline(
        png,
        "containers ended",
        &[
            plot::Panel {
                title: "daemon RSS over the soak".into(),
                y: "MiB".into(),
                series: vec![("VmRSS".into(), series(|p| p.rss_mib))],
                linear: false,
            },
            plot::Panel {
                title: "daemon descriptors over the soak".into(),
                y: "open descriptors".into(),
                series: vec![("/proc/<pid>/fd".into(), series(|p| p.fds as f64))],
                linear: false,
            },
        ],
    )
}

/// The soak's section of benchmarks.md (between the soak markers, which the bench keeps) and
/// its plot.
fn write(
    ctx: &Ctx,
    out: &Path,
    args: &SoakArgs,
    f: &Figures,
    bounds: &[Bound],
    points: &[Point],
) -> Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let png = out.join("soak.png");
    draw(&png, points)?;
    let machine = super::machine();
    let mut md = format!(
        "{BEGIN}\n## Soak\n\nWritten by `cargo xtask soak{}` on {}, {} build.\n\n**Machine:** {machine}\n\n\
         {} short containers, {} alive at once, through one daemon (`--container.retention=5s`, a summary \
         file, limits raised past the soak's) with a real Prometheus scraping it every second. Each \
         launcher (xtask/bench/soak-launcher.c) waits until it is admitted; then its command runs about \
         {:.1} s and ends: exit 0 ({}), exit 3 ({}), SIGTERM ({}), an OOM kill in one of {} job cgroups \
         limited to 32 MiB ({}), 8 forks then exit 0 ({}). `kernel.pid_max` is raised so that no container id \
         repeats. Checked once every series is gone: the daemon's RSS, its descriptors, container \
         cgroups left, the summary file's records counted per container id (and their exit codes), \
         `resets()` of every container counter family in Prometheus over the whole soak, the eBPF \
         maps' occupancy (`bpftool map dump` of the maps the daemon holds, and the set bits of \
         `TRACKED_PIDS`).\n\n| Bound | Figure | Met |\n|---|---|---|\n",
        if args.debug { " --debug" } else { "" },
        super::report_date(),
        if args.debug { "debug" } else { "release" },
        f.containers,
        args.alive,
        // The mean hold: its value in `soak`.
        args.alive as f64 * args.minutes as f64 * 60.0 / args.containers as f64 * 0.8,
        f.by_kind.get("ok").unwrap_or(&0),
        f.by_kind.get("fail").unwrap_or(&0),
        f.by_kind.get("signal").unwrap_or(&0),
        (args.alive / 4).max(1),
        f.by_kind.get("oom").unwrap_or(&0),
        f.by_kind.get("forks").unwrap_or(&0),
    );
    for b in bounds {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            b.name,
            b.value,
            if b.met { "yes" } else { "**no**" }
        );
    }
    let _ = write!(
        md,
        "\n`apptheus_ebpf_events_lost_total` after the soak: {}. The series took {:.0} s to go \
         after the last container ended.\n\n![RSS and descriptors over the soak](soak.png)\n{END}\n",
        f.events_lost, f.drain_s
    );
    let path = out.join("benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let tail = old[e + END.len()..].trim_start_matches('\n');
            format!("{}{md}{tail}", &old[..b])
        }
        _ if old.is_empty() => md,
        _ => format!("{}\n\n{md}", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    ctx.say(format!("wrote {} and {}", path.display(), png.display()));
    Ok(())
}

/// A Prometheus scraping the daemon every second into a TSDB in the soak's directory; the
/// container families that are not counters are dropped at the scrape (only counters are
/// checked), which keeps its memory to a few GB over 100,000 containers.
struct Prometheus {
    proc: sys::Proc,
    url: String,
    agent: ureq::Agent,
}

impl Prometheus {
    fn start(ctx: &Ctx, target: &str) -> Result<Prometheus> {
        let target = target.trim_start_matches("http://").trim_end_matches('/');
        let dir = ctx.tmp.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: apptheus\n    static_configs:\n      - targets: ['{target}']\n    \
             metric_relabel_configs:\n      - source_labels: [__name__]\n        action: keep\n        \
             regex: 'apptheus_container_.+_total|apptheus_containers|apptheus_ebpf_.+|apptheus_gateway_.+|apptheus_write_errors_total'\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let port = sys::free_port()?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?);
        let mut p = Prometheus {
            proc: sys::Proc::spawn("prometheus", &mut cmd)?,
            url: format!("http://127.0.0.1:{port}"),
            agent: sys::agent(),
        };
        let ready = sys::eventually(Duration::from_secs(30), Duration::from_millis(100), || {
            if let Some(st) = p.proc.exited() {
                bail!(
                    "prometheus exited at start ({st}): is it installed (`cargo xtask setup --test`)?"
                );
            }
            Ok(sys::get(&p.agent, &format!("{}/-/ready", p.url), false)
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })?;
        if ready.is_none() {
            bail!("prometheus not ready after 30 s");
        }
        // The daemon scraped at least once.
        let up = sys::eventually(Duration::from_secs(30), Duration::from_millis(250), || {
            Ok(p.query("up == 1")?.first().map(|_| ()))
        })?;
        if up.is_none() {
            bail!("prometheus did not scrape the daemon within 30 s");
        }
        Ok(p)
    }

    /// The series of an instant query's answer: (labels, value).
    fn query(&self, expr: &str) -> Result<Vec<(Value, f64)>> {
        let mut resp = self
            .agent
            .get(format!("{}/api/v1/query", self.url))
            .query("query", expr)
            .call()
            .with_context(|| format!("querying {expr}"))?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()?;
        let json: Value = serde_json::from_str(&body).with_context(|| format!("{expr}: {body}"))?;
        if json["status"] != "success" {
            bail!("{expr}: {body}");
        }
        Ok(json["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let v = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), v)
            })
            .collect())
    }

    /// The series of counter `family` over `range`, and their resets (those of the ids in
    /// `reused` left out: two containers' samples in one series).
    fn resets(&self, family: &str, range: &str, reused: &[String]) -> Result<(u64, u64)> {
        let series = self
            .query(&format!("count(resets({family}[{range}]))"))?
            .first()
            .map_or(0.0, |s| s.1) as u64;
        let resets = self
            .query(&format!("resets({family}[{range}]) > 0"))?
            .iter()
            .filter(|(m, _)| {
                !m["container"]
                    .as_str()
                    .is_some_and(|c| reused.iter().any(|r| r == c))
            })
            .map(|(_, v)| *v as u64)
            .sum();
        Ok((series, resets))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
    }
}

/// The occupancy of the daemon's eBPF maps, read with bpftool by the map ids of its
/// descriptors (`/proc/<pid>/fdinfo`): entries of its hash and storage maps, and the bits set in
/// `TRACKED_PIDS`.
mod maps {
    use std::{collections::BTreeMap, process::Command};

    use anyhow::{Context as _, Result, bail};
    use serde_json::Value;

    fn bpftool(args: &[&str]) -> Result<Value> {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .context("running bpftool (`cargo xtask setup --bench` installs it)")?;
        if !out.status.success() {
            bail!(
                "bpftool {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {args:?}"))
    }

    fn map_ids(pid: i32) -> Vec<u32> {
        let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                text.lines()
                    .find_map(|l| l.strip_prefix("map_id:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Bits set in a dump's values (bytes as "0x.." strings).
    fn bits(dump: &Value) -> u64 {
        dump.as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["value"].as_array().into_iter().flatten())
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .map(|b| u64::from(b.count_ones()))
            .sum()
    }

    pub fn occupancy(pid: i32) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for id in map_ids(pid) {
            let info = bpftool(&["map", "show", "id", &id.to_string()])?;
            let name = info["name"].as_str().unwrap_or_default().to_string();
            let kind = info["type"].as_str().unwrap_or_default();
            let count = match kind {
                "hash" | "lru_hash" | "cgroup_storage" => {
                    bpftool(&["map", "dump", "id", &id.to_string()])?
                        .as_array()
                        .map_or(0, |a| a.len() as u64)
                }
                "array" if name == "TRACKED_PIDS" => {
                    bits(&bpftool(&["map", "dump", "id", &id.to_string()])?)
                }
                // Ring buffer, per-CPU error slots, global data: no occupancy.
                _ => continue,
            };
            *out.entry(name).or_default() += count;
        }
        Ok(out)
    }
}
