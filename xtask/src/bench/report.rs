//! The bench's output: docs/benchmarks.md (machine line, summary table, per-scenario details),
//! docs/benchmarks.json (the raw numbers) and the summary between the bench markers of README.md.
//!
//! The code here computes: the summary's rows, each phase's numbers (a typed section) and the
//! raw JSON. The words are the templates' (`templates/`, MiniJinja, built into the binary):
//! benchmarks.md.j2 for docs/benchmarks.md, readme.md.j2 for the README's summary, and
//! table.md.j2, the summary table both show.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, syntax::SyntaxConfig};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{
    Admission, Ctx,
    curve::Point,
    hooks::{self, Loops, WithDaemon},
    lifecycle::{Ended, Life},
    plot::Panel,
    sampling::Sampling,
    scrape::Scrape,
    sys::Spread,
};

#[derive(Serialize)]
pub struct Row {
    pub scenario: String,
    pub ours: String,
    pub peer: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
    /// For the closing note when missed: what the profile showed, what would close it.
    pub why: Option<Why>,
}

impl Row {
    fn why(mut self, why: Why) -> Row {
        self.why = Some(why);
        self
    }
}

/// Why a row's target may be missed, with the numbers the closing note gives; the words are
/// the `why` macro's in benchmarks.md.j2, by `kind`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Why {
    SamplingVsFloor {
        files_per_pass: usize,
        containers: usize,
        files_floor_pct: f64,
        files_ratio: f64,
    },
    SamplingAbsolute {
        floor_pct: f64,
        files_floor_pct: f64,
        points_above: f64,
    },
    Rss,
    Visible {
        registered_median_ms: f64,
        poll_scrape_ms: f64,
    },
    HostLoop {
        a_drift_pct: f64,
    },
    Bpftrace,
    CurveStopped,
    CurvePass,
    CurveRss,
    CurveGrowth,
}

/// Median, p99 and max of some latencies, ms.
#[derive(Serialize)]
struct Quantiles {
    median: f64,
    p99: f64,
    max: f64,
}

impl Quantiles {
    fn of(values: &[f64]) -> Quantiles {
        let s = Spread::of(values);
        Quantiles {
            median: s.median,
            p99: pct_of(values, 0.99),
            max: s.max,
        }
    }
}

#[derive(Serialize)]
struct AdmissionSection {
    n: usize,
    spawn_s: f64,
    host_processes: usize,
    /// The host's processes once every launcher and its child run.
    processes_with_launchers: usize,
    total_s: f64,
    per_s: f64,
    latency: Quantiles,
}

#[derive(Serialize)]
struct SamplingSection {
    containers: usize,
    interval_ms: u64,
    window_s: f64,
    probes: usize,
    files_per_pass: usize,
    distinct: usize,
    by_kind: Vec<(String, usize)>,
    floor_failed: u64,
    daemon_pct: f64,
    daemon_slices: Spread,
    floor_pct: f64,
    floor_slices: Spread,
    files_floor_pct: f64,
    files_floor_slices: Spread,
    pass_ms: f64,
    profile: Option<String>,
}

/// One server and encoding of the scrape table.
#[derive(Serialize)]
struct ScrapeCase {
    name: &'static str,
    rps: Spread,
    p50_ms: Spread,
    p99_ms: Spread,
    bytes: usize,
    cpu_ms_per_scrape: Spread,
}

#[derive(Serialize)]
struct ScrapeSection {
    containers: usize,
    groups: usize,
    series_per_group: f64,
    text_mb: f64,
    pg_version: String,
    load_s: f64,
    cases: Vec<ScrapeCase>,
}

#[derive(Serialize)]
struct LifecycleSection {
    n: usize,
    poll_scrape_ms: f64,
    registered: Quantiles,
    visible: Quantiles,
    ended: Quantiles,
    bulk_n: usize,
    kill_s: f64,
    bulk: Quantiles,
}

/// The daemon's VmRSS in MiB at each point of the run.
#[derive(Serialize)]
struct MemorySection {
    idle: f64,
    containers: usize,
    full: f64,
    stressed: f64,
    after: f64,
    lifecycle_n: usize,
    after2: f64,
    leftover_cgroups: usize,
}

/// One loop kind of the hook cost: A/B per iteration, and the programs' share of it.
#[derive(Serialize)]
struct HookLoop {
    name: &'static str,
    a_before_us: Spread,
    b_us: Spread,
    a_after_us: Spread,
    slowdown_pct: f64,
    bpf_ns: f64,
    a_us: f64,
    bpf_pct: f64,
}

#[derive(Serialize)]
struct ProgRun {
    name: String,
    runs: u64,
    ns_per_run: f64,
}

/// Ours against bpftrace's one lookup on one tracepoint, ns per run (none where not seen).
#[derive(Serialize)]
struct Reference {
    tracepoint: &'static str,
    ours: Option<f64>,
    bpftrace: Option<f64>,
    ratio: Option<f64>,
}

#[derive(Serialize)]
struct HooksSection {
    iterations: u64,
    containers: usize,
    pinned: String,
    loops: Vec<HookLoop>,
    stats_iterations: u64,
    progs: Vec<ProgRun>,
    reference: Vec<Reference>,
}

/// One figure of the curve's table: its value at each N and the exponent of its growth.
#[derive(Serialize)]
struct FigureRow {
    label: &'static str,
    digits: usize,
    values: Vec<f64>,
    growth: Option<f64>,
}

#[derive(Serialize)]
struct CurveSection {
    ns: Vec<usize>,
    sampling_secs: u64,
    wrk_secs: u64,
    lifecycle_n: usize,
    /// Whether the network collector was on; if not, for lack of descriptors: the largest N
    /// asked for and the limit.
    network: bool,
    largest: usize,
    nofile: u64,
    figures: Vec<FigureRow>,
    plotted: bool,
    faster: Vec<&'static str>,
    /// The idle daemon's profile at the largest N.
    profile: Option<String>,
}

/// The details of benchmarks.md, one per phase, in the template's order; a phase that did not
/// run (a failed run, `--curve-only`) has none.
#[derive(Serialize, Default)]
struct Sections {
    admission: Option<AdmissionSection>,
    sampling: Option<SamplingSection>,
    scrape: Option<ScrapeSection>,
    lifecycle: Option<LifecycleSection>,
    memory: Option<MemorySection>,
    hooks: Option<HooksSection>,
    curve: Option<CurveSection>,
}

/// The texts of the report written by hand from the measurements (xtask/src/bench/profile.md
/// and curve.md).
#[derive(Serialize)]
struct Prose {
    profile: String,
    curve: String,
}

impl Prose {
    /// Read when the report is written, so that they can be brought up to date while a run
    /// goes on.
    fn read() -> Prose {
        let read = |name: &str| {
            let path = crate::workspace_root().join("xtask/src/bench").join(name);
            std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
        };
        Prose {
            profile: read("profile.md"),
            curve: read("curve.md"),
        }
    }
}

/// benchmarks.md.j2's context.
#[derive(Serialize)]
struct Page<'a> {
    date: &'a str,
    machine: &'a str,
    config: &'a str,
    rows: &'a [Row],
    missed: Vec<&'a Row>,
    #[serde(flatten)]
    sections: &'a Sections,
    notes: &'a [String],
    prose: &'a Prose,
    /// The soak's section of the benchmarks.md before, markers included.
    soak: Option<&'a str>,
}

/// readme.md.j2's context.
#[derive(Serialize)]
struct Summary<'a> {
    date: &'a str,
    machine: &'a str,
    rows: &'a [Row],
    begin: &'a str,
    end: &'a str,
    /// The sentence that opens the README's section the first time.
    intro: bool,
}

/// Built into xtask, so that a report is written the same from any checkout state; only the
/// hand-written prose is read at run time (`Prose`).
const TEMPLATES: [(&str, &str); 3] = [
    (
        "benchmarks.md.j2",
        include_str!("templates/benchmarks.md.j2"),
    ),
    ("readme.md.j2", include_str!("templates/readme.md.j2")),
    ("table.md.j2", include_str!("templates/table.md.j2")),
];

/// `{{ x|fixed(d) }}`: x with d decimals, as `format!("{x:.d$}")` writes it.
fn fixed(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

/// `{{ x|signed(d) }}`: x with its sign and d decimals.
fn signed(x: f64, digits: usize) -> String {
    format!("{x:+.digits$}")
}

fn render(name: &str, ctx: impl Serialize) -> Result<String> {
    let mut env = Environment::new();
    // Markdown: the values go in as they are. Blocks take the newline after them, so that a
    // line holding only a block tag leaves nothing.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .context("the report templates' syntax")?,
    );
    // A name the context lacks is a mistake in the template, not an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("fixed", fixed);
    env.add_filter("signed", signed);
    for (n, source) in TEMPLATES {
        env.add_template(n, source)
            .with_context(|| format!("xtask/src/bench/templates/{n}"))?;
    }
    env.get_template(name)
        .and_then(|t| t.render(minijinja::value::Serde(ctx)))
        .with_context(|| format!("rendering xtask/src/bench/templates/{name}"))
}

pub struct Report {
    pub machine: String,
    date: String,
    config: String,
    rows: Vec<Row>,
    sections: Sections,
    notes: Vec<String>,
    raw: Map<String, Value>,
    interval_ms: u64,
    containers: usize,
    fork_iterations: u64,
    lifecycle_n: usize,
    curve_sampling_secs: u64,
    wrk_secs: u64,
    nofile: u64,
    /// The kernel has /proc/<pid>/task/<tid>/children (admission reads them, not /proc).
    children_files: bool,
    /// The largest N the curve was asked for.
    curve_largest: usize,
}

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";
/// The README's section the summary goes in when the README has no markers yet.
const HEADING: &str = "\n## Benchmarks\n";

fn sampling_json(s: &Sampling) -> Value {
    json!({"containers": s.containers, "window_s": s.window_s, "daemon_pct_of_core": s.daemon_pct,
           "daemon_slices_pct": s.daemon_slices.json(), "floor_pct_of_core": s.floor_pct,
           "floor_slices_pct": s.floor_slices.json(), "ratio": s.daemon_pct / s.floor_pct,
           "same_files_floor_pct_of_core": s.files_floor_pct,
           "same_files_floor_slices_pct": s.files_floor_slices.json(),
           "ratio_same_files": s.daemon_pct / s.files_floor_pct,
           "probe_files": s.probes, "other_files_per_pass": s.files_per_pass,
           "distinct_other_files": s.distinct, "floor_failed_reads": s.floor_failed,
           "pass_ms": s.pass_ms, "files_by_kind": s.by_kind})
}

/// Costs whose growth faster than N the curve's text explains.
const DOCUMENTED: &[&str] = &["admission of all N, s"];

fn pct_of(values: &[f64], q: f64) -> f64 {
    Spread::quantile(values, q)
}

impl Report {
    pub fn new(ctx: &Ctx) -> Result<Report> {
        let date = crate::setup::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown date".into());
        let c = &ctx.cfg;
        let config = format!(
            "{} containers, --monitor.interval={}ms, --container.retention={}s, wrk {} s × {} per case, sampling window {} s, fork loops {} iterations × {} rounds per phase; scale curve at N = {} (sampling window {} s){}",
            c.containers,
            c.interval_ms,
            c.retention_s,
            c.wrk_secs,
            c.wrk_reps,
            c.sampling_secs,
            c.fork_iterations,
            c.hook_rounds,
            c.curve
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            c.curve_sampling_secs,
            if c.quick { " (--quick)" } else { "" }
        );
        let machine = super::machine();
        let mut raw = Map::new();
        raw.insert("date".into(), json!(date));
        raw.insert("machine".into(), json!(machine));
        raw.insert("config".into(), json!(config));
        Ok(Report {
            machine,
            date,
            config,
            rows: Vec::new(),
            sections: Sections::default(),
            notes: Vec::new(),
            raw,
            interval_ms: c.interval_ms,
            containers: c.containers,
            fork_iterations: c.fork_iterations,
            lifecycle_n: c.lifecycle,
            curve_sampling_secs: c.curve_sampling_secs,
            wrk_secs: c.wrk_secs,
            nofile: ctx.nofile,
            children_files: super::sys::has_children_files(),
            curve_largest: c.curve.iter().copied().max().unwrap_or(0),
        })
    }

    pub fn note(&mut self, s: String) {
        self.notes.push(s);
    }

    fn push(&mut self, r: Row) {
        self.rows.push(r);
    }

    pub fn admission(&mut self, a: &Admission) {
        let lat = Spread::of(&a.latency_ms);
        let p99 = pct_of(&a.latency_ms, 0.99);
        self.raw.insert(
            "admission".into(),
            json!({"containers": a.n, "total_s": a.total_s, "spawn_s": a.spawn_s,
                   "latency_ms": lat.json(), "latency_p99_ms": p99, "host_processes": a.host_processes}),
        );
        self.push(super::row(
            &format!("Admission of {} containers (s)", a.n),
            format!("{:.1}", a.total_s),
            "—".into(),
            "—".into(),
            "(reported)",
            None,
        ));
        self.sections.admission = Some(AdmissionSection {
            n: a.n,
            spawn_s: a.spawn_s,
            host_processes: a.host_processes,
            processes_with_launchers: a.host_processes + 2 * a.n,
            total_s: a.total_s,
            per_s: a.n as f64 / a.total_s,
            latency: Quantiles::of(&a.latency_ms),
        });
    }

    pub fn sampling(&mut self, s: &Sampling) {
        let ratio = s.daemon_pct / s.floor_pct;
        let files_ratio = s.daemon_pct / s.files_floor_pct;
        self.raw.insert("sampling".into(), sampling_json(s));
        self.push(
            super::row(
                "Sampling CPU, % of one core (vs C floor: probes kept open, one pread each per pass)",
                super::fmt_pct(s.daemon_pct),
                super::fmt_pct(s.floor_pct),
                format!("{ratio:.2}×"),
                "≤ 1.5×",
                Some(ratio <= 1.5),
            )
            .why(Why::SamplingVsFloor {
                files_per_pass: s.files_per_pass,
                containers: s.containers,
                files_floor_pct: s.files_floor_pct,
                files_ratio,
            }),
        );
        self.push(
            super::row(
                "Sampling CPU, % of one core (absolute)",
                super::fmt_pct(s.daemon_pct),
                "—".into(),
                "—".into(),
                "≤ 1.5%",
                Some(s.daemon_pct <= 1.5),
            )
            .why(Why::SamplingAbsolute {
                floor_pct: s.floor_pct,
                files_floor_pct: s.files_floor_pct,
                points_above: s.daemon_pct - s.files_floor_pct,
            }),
        );
        self.push(super::row(
            "Sampling CPU, % of one core (vs the same-files floor)",
            super::fmt_pct(s.daemon_pct),
            super::fmt_pct(s.files_floor_pct),
            format!("{files_ratio:.2}×"),
            "(reported)",
            None,
        ));
        self.sections.sampling = Some(SamplingSection {
            containers: s.containers,
            interval_ms: self.interval_ms,
            window_s: s.window_s,
            probes: s.probes,
            files_per_pass: s.files_per_pass,
            distinct: s.distinct,
            by_kind: s.by_kind.clone(),
            floor_failed: s.floor_failed,
            daemon_pct: s.daemon_pct,
            daemon_slices: s.daemon_slices,
            floor_pct: s.floor_pct,
            floor_slices: s.floor_slices,
            files_floor_pct: s.files_floor_pct,
            files_floor_slices: s.files_floor_slices,
            pass_ms: s.pass_ms,
            profile: s.profile.clone(),
        });
    }

    pub fn scrape(&mut self, s: &Scrape) {
        let case = |c: &super::scrape::Case| {
            json!({"bytes": c.bytes,
                   "rps": c.spread(|w| w.rps).json(),
                   "p50_ms": c.spread(|w| w.p50_ms).json(),
                   "p99_ms": c.spread(|w| w.p99_ms).json(),
                   "cpu_ms_per_scrape": c.spread(|w| w.cpu_ms_per_scrape).json()})
        };
        self.raw.insert(
            "scrape".into(),
            json!({"pushgateway_version": s.pg_version, "groups": s.groups,
                   "series_per_group": s.series_per_group, "pushgateway_load_s": s.load_s,
                   "container_text_bytes": s.container_text_bytes,
                   "ours_gzip": case(&s.ours_gzip), "ours_plain": case(&s.ours_plain),
                   "pushgateway_gzip": case(&s.pg_gzip), "pushgateway_plain": case(&s.pg_plain)}),
        );
        let rg = s.ours_gzip.spread(|w| w.rps).median / s.pg_gzip.spread(|w| w.rps).median;
        let rp = s.ours_plain.spread(|w| w.rps).median / s.pg_plain.spread(|w| w.rps).median;
        self.push(super::row(
            "Scrape with gzip, requests/s (vs Pushgateway)",
            format!("{:.0}", s.ours_gzip.spread(|w| w.rps).median),
            format!("{:.0}", s.pg_gzip.spread(|w| w.rps).median),
            format!("{rg:.1}×"),
            "≥ 10×",
            Some(rg >= 10.0),
        ));
        self.push(super::row(
            "Scrape without gzip, requests/s (vs Pushgateway)",
            format!("{:.0}", s.ours_plain.spread(|w| w.rps).median),
            format!("{:.0}", s.pg_plain.spread(|w| w.rps).median),
            format!("{rp:.1}×"),
            "(reported)",
            None,
        ));
        let cg = s.ours_gzip.spread(|w| w.cpu_ms_per_scrape).median;
        let pg = s.pg_gzip.spread(|w| w.cpu_ms_per_scrape).median;
        self.push(super::row(
            "CPU per gzip scrape, ms (vs Pushgateway)",
            format!("{cg:.3}"),
            format!("{pg:.2}"),
            format!("{:.3}×", cg / pg),
            "(reported)",
            None,
        ));
        let cases = [
            ("apptheus, gzip", &s.ours_gzip),
            ("Pushgateway, gzip", &s.pg_gzip),
            ("apptheus, plain", &s.ours_plain),
            ("Pushgateway, plain", &s.pg_plain),
        ]
        .into_iter()
        .map(|(name, c)| ScrapeCase {
            name,
            rps: c.spread(|w| w.rps),
            p50_ms: c.spread(|w| w.p50_ms),
            p99_ms: c.spread(|w| w.p99_ms),
            bytes: c.bytes,
            cpu_ms_per_scrape: c.spread(|w| w.cpu_ms_per_scrape),
        })
        .collect();
        self.sections.scrape = Some(ScrapeSection {
            containers: self.containers,
            groups: s.groups,
            series_per_group: s.series_per_group,
            text_mb: s.container_text_bytes as f64 / 1e6,
            pg_version: s.pg_version.clone(),
            load_s: s.load_s,
            cases,
        });
    }

    pub fn memory(&mut self, rss: [f64; 5], ended: &Ended) {
        let [idle, full, stressed, after, after2] = rss;
        self.raw.insert(
            "memory".into(),
            json!({"rss_idle_mib": idle, "rss_at_containers_mib": full,
                   "rss_after_wrk_mib": stressed, "rss_after_end_mib": after,
                   "rss_after_second_cycle_mib": after2,
                   "leftover_container_cgroups": ended.leftover_cgroups}),
        );
        self.push(
            super::row(
                &format!(
                    "RSS at {} containers (sampled, scraped once), MiB",
                    self.containers
                ),
                format!("{full:.1}"),
                "—".into(),
                "—".into(),
                "≤ 32 MiB",
                Some(full <= 32.0),
            )
            .why(Why::Rss),
        );
        self.push(super::row(
            "RSS after the wrk runs (4 connections, plain and gzip), MiB",
            format!("{stressed:.1}"),
            "—".into(),
            "—".into(),
            "(reported)",
            None,
        ));
        self.push(super::row(
            "RSS after a second cycle ended, MiB (vs after the first)",
            format!("{after2:.1}"),
            format!("{after:.1}"),
            format!("{:+.1} MiB", after2 - after),
            "no growth left (≤ +1 MiB, no cgroup left)",
            Some(after2 <= after + 1.0 && ended.leftover_cgroups == 0),
        ));
        self.sections.memory = Some(MemorySection {
            idle,
            containers: self.containers,
            full,
            stressed,
            after,
            lifecycle_n: self.lifecycle_n,
            after2,
            leftover_cgroups: ended.leftover_cgroups,
        });
    }

    pub fn lifecycle(&mut self, l: &Life, e: &Ended) {
        let vis = Spread::of(&l.visible_ms);
        let reg = Spread::of(&l.registered_ms);
        let end = Spread::of(&l.ended_ms);
        let bulk = Spread::of(&e.ended_ms);
        let q = |v: &[f64]| pct_of(v, 0.99);
        self.raw.insert(
            "lifecycle".into(),
            json!({"containers": l.n, "visible_ms": vis.json(), "visible_p99_ms": q(&l.visible_ms),
                   "registered_ms": reg.json(), "ended_ms": end.json(), "ended_p99_ms": q(&l.ended_ms),
                   "poll_scrape_ms": l.poll_scrape_ms,
                   "bulk_end": {"containers": e.n, "kill_s": e.kill_s, "ended_ms": bulk.json(),
                                "ended_p99_ms": q(&e.ended_ms)}}),
        );
        let interval = self.interval_ms as f64;
        self.push(
            super::row(
                &format!("Connect → visible on /metrics, max of {} (ms)", l.n),
                format!("{:.0}", vis.max),
                format!("{interval:.0} (interval)"),
                format!("{:.2}×", vis.max / interval),
                "≤ 1 interval",
                Some(vis.max <= interval),
            )
            .why(Why::Visible {
                registered_median_ms: reg.median,
                poll_scrape_ms: l.poll_scrape_ms,
            }),
        );
        self.push(super::row(
            &format!("Last exit → ended, max of {} (ms)", l.n),
            format!("{:.1}", end.max),
            "100".into(),
            format!("{:.2}×", end.max / 100.0),
            "≤ 100 ms",
            Some(end.max <= 100.0),
        ));
        self.sections.lifecycle = Some(LifecycleSection {
            n: l.n,
            poll_scrape_ms: l.poll_scrape_ms,
            registered: Quantiles::of(&l.registered_ms),
            visible: Quantiles::of(&l.visible_ms),
            ended: Quantiles::of(&l.ended_ms),
            bulk_n: e.n,
            kill_s: e.kill_s,
            bulk: Quantiles::of(&e.ended_ms),
        });
    }

    pub fn hooks(&mut self, a1: &Loops, b: &WithDaemon, a2: &Loops) {
        let mut raw = Map::new();
        let mut loops = Vec::new();
        for (exec, name) in [(false, "fork+exit"), (true, "fork+execve(/bin/true)+exit")] {
            let (sa, sb, slow) = hooks::slowdown(a1, &b.loops, a2, exec);
            let ns = |l: &Loops| {
                if exec {
                    l.exec_ns.clone()
                } else {
                    l.exit_ns.clone()
                }
            };
            let us = |l: &Loops| {
                let v: Vec<f64> = ns(l).iter().map(|x| x / 1000.0).collect();
                Spread::of(&v)
            };
            let bpf_ns = if exec { b.exec_bpf_ns } else { b.exit_bpf_ns };
            let bpf_pct = bpf_ns / sa.median * 100.0;
            loops.push(HookLoop {
                name,
                a_before_us: us(a1),
                b_us: us(&b.loops),
                a_after_us: us(a2),
                slowdown_pct: slow,
                bpf_ns,
                a_us: sa.median / 1000.0,
                bpf_pct,
            });
            raw.insert(
                name.into(),
                json!({"a_ns": sa.json(), "b_ns": sb.json(), "slowdown_pct": slow,
                       "bpf_ns_per_iteration": bpf_ns, "bpf_pct_of_iteration": bpf_pct,
                       "a_before_ns": ns(a1), "b_runs_ns": ns(&b.loops), "a_after_ns": ns(a2)}),
            );
            let a_drift = (Spread::of(&ns(a2)).median / Spread::of(&ns(a1)).median - 1.0) * 100.0;
            self.push(
                super::row(
                    &format!("Host {name}, us/iteration (daemon vs none)"),
                    format!("{:.1}", sb.median / 1000.0),
                    format!("{:.1}", sa.median / 1000.0),
                    format!("{:.3}× ({slow:+.2}%)", sb.median / sa.median),
                    "≤ 1% slower",
                    Some(slow <= 1.0),
                )
                .why(Why::HostLoop {
                    a_drift_pct: a_drift,
                }),
            );
            self.push(super::row(
                &format!("Host {name}: BPF programs' run time per iteration (vs the iteration)"),
                format!("{:.2} us", bpf_ns / 1000.0),
                format!("{:.1} us", sa.median / 1000.0),
                format!("{bpf_pct:.2}%"),
                "≤ 1%",
                Some(bpf_pct <= 1.0),
            ));
        }
        let mut progs = Vec::new();
        let mut prog_runs = Vec::new();
        for p in &b.progs {
            let per = p.run_time_ns as f64 / p.run_cnt.max(1) as f64;
            prog_runs.push(ProgRun {
                name: p.name.clone(),
                runs: p.run_cnt,
                ns_per_run: per,
            });
            progs.push(json!({"name": p.name, "run_cnt": p.run_cnt, "run_time_ns": p.run_time_ns, "ns_per_run": per}));
        }
        raw.insert("bpf_stats".into(), json!(progs));
        let mut reference = Vec::new();
        let mut references = Vec::new();
        for (tracepoint, ours) in hooks::HOOKS {
            let (o, r) = (
                hooks::ns_per_run(&b.progs, ours),
                hooks::ns_per_run(&b.reference, tracepoint),
            );
            let show = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.0}"));
            let ratio = o.zip(r).map(|(o, r)| o / r);
            references.push(Reference {
                tracepoint,
                ours: o,
                bpftrace: r,
                ratio,
            });
            reference.push(
                json!({"tracepoint": tracepoint, "ours_ns_per_run": o, "bpftrace_ns_per_run": r}),
            );
            self.push(
                super::row(
                    &format!("eBPF `{tracepoint}`, ns per run on untracked tasks (vs bpftrace, one lookup)"),
                    show(o),
                    show(r),
                    ratio.map_or("—".to_string(), |x| format!("{x:.2}×")),
                    "≤ 1.5×",
                    Some(ratio.is_some_and(|x| x <= 1.5)),
                )
                .why(Why::Bpftrace),
            );
        }
        raw.insert("bpftrace_reference".into(), json!(reference));
        raw.insert("pinning".into(), json!(b.pinned));
        self.raw.insert("hooks".into(), Value::Object(raw));
        self.sections.hooks = Some(HooksSection {
            iterations: self.fork_iterations,
            containers: self.containers,
            pinned: b.pinned.clone(),
            loops,
            stats_iterations: b.stats_iterations,
            progs: prog_runs,
            reference: references,
        });
    }

    /// The scale curve: a table of every figure per N, the plots (`benchmarks-curve.png` in
    /// `out`), the growth of each figure from the smallest N to the largest, and the rows for
    /// the summary table (RSS and pass time at the largest N).
    pub fn curve(&mut self, points: &[Point], out: &Path) {
        if points.is_empty() {
            return;
        }
        let plotted = match super::plot::draw(&out.join("benchmarks-curve.png"), &panels(points)) {
            Ok(()) => true,
            Err(e) => {
                self.notes
                    .push(format!("The curve's plot was not drawn: {e:#}"));
                false
            }
        };
        self.curve_drawn(points, plotted);
    }

    /// `curve` once the plots were drawn (or not): the table, the growth and the rows.
    fn curve_drawn(&mut self, points: &[Point], plotted: bool) {
        if points.is_empty() {
            return;
        }
        let mut raw = Vec::new();
        for p in points {
            let a = &p.admission;
            raw.push(json!({
                "containers": p.n, "host_processes": a.host_processes,
                "admission_total_s": a.total_s, "admission_spawn_s": a.spawn_s,
                "admission_ms_per_container": a.total_s * 1000.0 / p.n as f64,
                "admission_latency_ms": Spread::of(&a.latency_ms).json(),
                "rss_mib": p.rss_mib, "rss_after_wrk_mib": p.rss_after_wrk_mib, "descriptors": p.fds,
                "sampling": sampling_json(&p.sampling),
                "scrape_gzip": {"rps": p.gzip.rps, "p50_ms": p.gzip.p50_ms, "p99_ms": p.gzip.p99_ms,
                                "cpu_ms_per_scrape": p.gzip.cpu_ms_per_scrape, "bytes": p.gzip_bytes},
                "scrape_plain": {"rps": p.plain.rps, "p50_ms": p.plain.p50_ms, "p99_ms": p.plain.p99_ms,
                                 "cpu_ms_per_scrape": p.plain.cpu_ms_per_scrape, "bytes": p.plain_bytes},
                "lifecycle": {"containers": p.life.n, "visible_ms": Spread::of(&p.life.visible_ms).json(),
                              "registered_ms": Spread::of(&p.life.registered_ms).json(),
                              "ended_ms": Spread::of(&p.life.ended_ms).json(),
                              "poll_scrape_ms": p.life.poll_scrape_ms},
                "bulk_end": {"containers": p.bulk.n, "kill_s": p.bulk.kill_s,
                             "ended_ms": Spread::of(&p.bulk.ended_ms).json()},
                "leftover_cgroups": p.leftover_cgroups,
            }));
        }
        self.raw.insert("curve".into(), Value::Array(raw));

        // (label, unit digits, value per point, whether it is a cost that should grow at most
        // linearly)
        type Figure<'a> = (&'a str, usize, Box<dyn Fn(&Point) -> f64>, bool);
        let figures: Vec<Figure> = vec![
            (
                "host processes when the launchers started",
                0,
                Box::new(|p: &Point| p.admission.host_processes as f64),
                false,
            ),
            (
                "admission of all N, s",
                1,
                Box::new(|p: &Point| p.admission.total_s),
                true,
            ),
            (
                "admission, ms per container (all N / N)",
                2,
                Box::new(|p: &Point| p.admission.total_s * 1000.0 / p.n as f64),
                false,
            ),
            (
                "launcher start → registered, median ms (back to back)",
                0,
                Box::new(|p: &Point| Spread::of(&p.admission.latency_ms).median),
                false,
            ),
            (
                "sampling CPU, % of one core (idle)",
                2,
                Box::new(|p: &Point| p.sampling.daemon_pct),
                true,
            ),
            (
                "floor (probes, pread), % of one core",
                2,
                Box::new(|p: &Point| p.sampling.floor_pct),
                true,
            ),
            (
                "daemon ÷ floor",
                2,
                Box::new(|p: &Point| p.sampling.daemon_pct / p.sampling.floor_pct),
                false,
            ),
            (
                "same-files floor, % of one core",
                2,
                Box::new(|p: &Point| p.sampling.files_floor_pct),
                true,
            ),
            (
                "sampling pass, ms (apptheus_sample_duration_seconds)",
                1,
                Box::new(|p: &Point| p.sampling.pass_ms),
                true,
            ),
            (
                "scrape with gzip, requests/s",
                0,
                Box::new(|p: &Point| p.gzip.rps),
                false,
            ),
            (
                "CPU per gzip scrape, ms",
                3,
                Box::new(|p: &Point| p.gzip.cpu_ms_per_scrape),
                true,
            ),
            (
                "scrape without gzip, requests/s",
                0,
                Box::new(|p: &Point| p.plain.rps),
                false,
            ),
            (
                "CPU per plain scrape, ms",
                3,
                Box::new(|p: &Point| p.plain.cpu_ms_per_scrape),
                true,
            ),
            (
                "response bytes, gzip",
                0,
                Box::new(|p: &Point| p.gzip_bytes as f64),
                true,
            ),
            (
                "response bytes, plain",
                0,
                Box::new(|p: &Point| p.plain_bytes as f64),
                true,
            ),
            (
                "RSS, sampled and scraped once, MiB",
                1,
                Box::new(|p: &Point| p.rss_mib),
                true,
            ),
            (
                "RSS after the wrk runs, MiB",
                1,
                Box::new(|p: &Point| p.rss_after_wrk_mib),
                true,
            ),
            (
                "daemon's open descriptors",
                0,
                Box::new(|p: &Point| p.fds as f64),
                true,
            ),
            (
                "connect → visible, median ms",
                0,
                Box::new(|p: &Point| Spread::of(&p.life.visible_ms).median),
                false,
            ),
            (
                "connect → visible, max ms",
                0,
                Box::new(|p: &Point| Spread::of(&p.life.visible_ms).max),
                false,
            ),
            (
                "poll of /metrics during it, ms each",
                1,
                Box::new(|p: &Point| p.life.poll_scrape_ms),
                false,
            ),
            (
                "last exit → ended, median ms",
                1,
                Box::new(|p: &Point| Spread::of(&p.life.ended_ms).median),
                false,
            ),
            (
                "last exit → ended, max ms",
                1,
                Box::new(|p: &Point| Spread::of(&p.life.ended_ms).max),
                false,
            ),
            (
                "all N killed at once: kill → ended, max ms",
                0,
                Box::new(|p: &Point| Spread::of(&p.bulk.ended_ms).max),
                false,
            ),
            (
                "container cgroups left after",
                0,
                Box::new(|p: &Point| p.leftover_cgroups as f64),
                false,
            ),
        ];
        let (first, last) = (&points[0], &points[points.len() - 1]);
        let span = (last.n as f64 / first.n as f64).ln();
        let mut faster = Vec::new();
        let mut rows = Vec::new();
        for (label, digits, f, cost) in figures {
            let (a, b) = (f(first), f(last));
            let growth = (points.len() > 1 && a > 0.0 && b > 0.0 && span > 0.0).then(|| {
                let k = (b / a).ln() / span;
                if cost && k > 1.2 {
                    faster.push(label);
                }
                k
            });
            rows.push(FigureRow {
                label,
                digits,
                values: points.iter().map(&f).collect(),
                growth,
            });
        }
        self.sections.curve = Some(CurveSection {
            ns: points.iter().map(|p| p.n).collect(),
            sampling_secs: self.curve_sampling_secs,
            wrk_secs: self.wrk_secs,
            lifecycle_n: first.life.n,
            network: first.network,
            largest: self.curve_largest,
            nofile: self.nofile,
            figures: rows,
            plotted,
            faster: faster.clone(),
            profile: last.sampling.profile.clone(),
        });

        if last.n < self.curve_largest {
            self.push(
                super::row(
                    &format!("Scale curve at {} containers", self.curve_largest),
                    "did not complete".into(),
                    "—".into(),
                    "—".into(),
                    "RSS ≤ 64 MiB, pass well under the interval",
                    Some(false),
                )
                .why(Why::CurveStopped),
            );
            return;
        }
        let interval = self.interval_ms as f64;
        let pass = last.sampling.pass_ms;
        self.push(
            super::row(
                &format!(
                    "Sampling pass at {} containers, ms (vs the interval)",
                    last.n
                ),
                format!("{pass:.1}"),
                format!("{interval:.0}"),
                format!("{:.2}×", pass / interval),
                "≤ 0.1×",
                Some(pass <= 0.1 * interval),
            )
            .why(Why::CurvePass),
        );
        let vs_floor = last.sampling.daemon_pct / last.sampling.floor_pct;
        self.push(
            super::row(
                &format!(
                    "Sampling CPU at {} idle containers, % of one core (vs C floor)",
                    last.n
                ),
                super::fmt_pct(last.sampling.daemon_pct),
                super::fmt_pct(last.sampling.floor_pct),
                format!("{vs_floor:.2}×"),
                "≤ 3×",
                Some(vs_floor <= 3.0),
            )
            .why(Why::CurvePass),
        );
        // A point exists only once all its launchers were admitted, and its lifecycle polled
        // /metrics back to back throughout.
        self.push(super::row(
            &format!(
                "Containers admitted at {} (every collector on, descriptor limit {}); /metrics polled throughout",
                last.n, self.nofile
            ),
            format!("{} of {}", last.n, last.n),
            format!("{:.1} ms per poll", last.life.poll_scrape_ms),
            "—".into(),
            "all; answering",
            Some(true),
        ));
        self.push(
            super::row(
                &format!("RSS at {} containers (sampled, scraped once), MiB", last.n),
                format!("{:.1}", last.rss_mib),
                "—".into(),
                "—".into(),
                "≤ 64 MiB",
                Some(last.rss_mib <= 64.0),
            )
            .why(Why::CurveRss),
        );
        let children = self.children_files;
        let k = (last.admission.total_s / first.admission.total_s).ln()
            / (last.n as f64 / first.n as f64).ln();
        if last.n > first.n {
            self.push(super::row(
                &format!(
                    "Admission of all N, growth exponent {} → {} ({})",
                    first.n,
                    last.n,
                    if children {
                        "this kernel has children files"
                    } else {
                        "this kernel has no children files: the /proc listing"
                    }
                ),
                format!("N^{k:.2}"),
                "—".into(),
                "—".into(),
                if children {
                    "≤ 1.15"
                } else {
                    "(reported; ≤ 1.15 with children files)"
                },
                children.then_some(k <= 1.15),
            ));
        }
        self.push(super::row(
            &format!(
                "Admission of {} containers, ms per container (vs at {})",
                last.n, first.n
            ),
            format!("{:.2}", last.admission.total_s * 1000.0 / last.n as f64),
            format!("{:.2}", first.admission.total_s * 1000.0 / first.n as f64),
            format!(
                "{:.1}×",
                (last.admission.total_s / last.n as f64)
                    / (first.admission.total_s / first.n as f64)
            ),
            "(reported; see Scale curve)",
            None,
        ));
        self.push(
            super::row(
                &format!("Costs growing faster than N ({} → {})", first.n, last.n),
                if faster.is_empty() {
                    "none".into()
                } else {
                    faster.join("; ")
                },
                "—".into(),
                "—".into(),
                "none without a documented reason",
                Some(faster.iter().all(|f| DOCUMENTED.contains(f))),
            )
            .why(Why::CurveGrowth),
        );
    }

    pub fn write(&mut self, out: &Path, readme: bool) -> Result<()> {
        self.write_with(out, readme, &Prose::read())
    }

    /// `write` with the hand-written texts given.
    fn write_with(&mut self, out: &Path, readme: bool, prose: &Prose) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let md_path = out.join("benchmarks.md");
        // The soak's section (`cargo xtask soak`) is its own: kept as it is.
        let old = std::fs::read_to_string(&md_path).unwrap_or_default();
        let soak = match (old.find(super::soak::BEGIN), old.find(super::soak::END)) {
            (Some(b), Some(e)) if e > b => Some(&old[b..e + super::soak::END.len()]),
            _ => None,
        };
        let md = render(
            "benchmarks.md.j2",
            Page {
                date: &self.date,
                machine: &self.machine,
                config: &self.config,
                rows: &self.rows,
                missed: self.rows.iter().filter(|r| r.met == Some(false)).collect(),
                sections: &self.sections,
                notes: &self.notes,
                prose,
                soak,
            },
        )?;
        std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
        self.raw.insert(
            "rows".into(),
            Value::Array(
                self.rows
                    .iter()
                    .map(|r| {
                        json!({"scenario": r.scenario, "apptheus": r.ours, "peer": r.peer,
                               "ratio": r.ratio, "target": r.target, "met": r.met})
                    })
                    .collect(),
            ),
        );
        self.raw.insert("notes".into(), json!(self.notes));
        let json_path = out.join("benchmarks.json");
        std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&Value::Object(self.raw.clone()))? + "\n",
        )
        .with_context(|| format!("writing {}", json_path.display()))?;
        if readme {
            self.write_readme()?;
        }
        Ok(())
    }

    /// Replace the summary between the bench markers of README.md (or the body of its
    /// "## Benchmarks" section, the first time).
    fn write_readme(&self) -> Result<()> {
        let path = crate::workspace_root().join("README.md");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let new = self.readme_text(&text)?;
        std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))
    }

    /// README.md's `text` with this run's summary in it (apart from the write, for the tests).
    fn readme_text(&self, text: &str) -> Result<String> {
        let block = |intro: bool| {
            render(
                "readme.md.j2",
                Summary {
                    date: &self.date,
                    machine: &self.machine,
                    rows: &self.rows,
                    begin: BEGIN,
                    end: END,
                    intro,
                },
            )
        };
        Ok(
            if let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) {
                format!("{}{}{}", &text[..b], block(false)?, &text[e + END.len()..])
            } else if let Some(h) = text.find(HEADING) {
                let body = h + HEADING.len();
                let next = text[body..]
                    .find("\n## ")
                    .map_or(text.len(), |i| body + i + 1);
                format!("{}\n{}\n{}", &text[..body], block(true)?, &text[next..])
            } else {
                format!("{text}{HEADING}\n{}\n", block(false)?)
            },
        )
    }
}

/// The curve's plots: one panel per figure that matters, each against N.
fn panels(points: &[Point]) -> Vec<Panel> {
    let series = |name: &str, f: &dyn Fn(&Point) -> f64| {
        (
            name.to_string(),
            points
                .iter()
                .map(|p| (p.n as f64, f(p)))
                .collect::<Vec<_>>(),
        )
    };
    let panel =
        |title: &str, y: &str, linear: bool, series: Vec<(String, Vec<(f64, f64)>)>| Panel {
            title: title.into(),
            y: y.into(),
            series,
            linear,
        };
    vec![
        panel(
            "Admission of all N (launchers back to back)",
            "seconds",
            true,
            vec![series("all N registered", &|p| p.admission.total_s)],
        ),
        panel(
            "Sampling CPU, idle containers",
            "% of one core",
            true,
            vec![
                series("apptheus", &|p| p.sampling.daemon_pct),
                series("floor (probes kept open, pread)", &|p| p.sampling.floor_pct),
                series("same-files floor", &|p| p.sampling.files_floor_pct),
            ],
        ),
        panel(
            "Sampling pass (apptheus_sample_duration_seconds)",
            "ms",
            true,
            vec![series("one pass", &|p| p.sampling.pass_ms)],
        ),
        panel(
            "CPU per scrape",
            "ms",
            true,
            vec![
                series("plain", &|p| p.plain.cpu_ms_per_scrape),
                series("gzip", &|p| p.gzip.cpu_ms_per_scrape),
            ],
        ),
        panel(
            "Scrapes per second (wrk, 4 connections)",
            "requests/s",
            false,
            vec![
                series("gzip", &|p| p.gzip.rps),
                series("plain", &|p| p.plain.rps),
            ],
        ),
        panel(
            "Resident memory of the daemon",
            "MiB",
            true,
            vec![
                series("sampled, scraped once", &|p| p.rss_mib),
                series("after the wrk runs", &|p| p.rss_after_wrk_mib),
            ],
        ),
        panel(
            "Connect → visible on /metrics",
            "ms",
            false,
            vec![
                series("max", &|p| Spread::of(&p.life.visible_ms).max),
                series("median", &|p| Spread::of(&p.life.visible_ms).median),
            ],
        ),
        panel(
            "Last exit → ended",
            "ms",
            false,
            vec![
                series("max", &|p| Spread::of(&p.life.ended_ms).max),
                series("median", &|p| Spread::of(&p.life.ended_ms).median),
                series("all N at once, max", &|p| Spread::of(&p.bulk.ended_ms).max),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests;
