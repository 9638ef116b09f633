//! The bench's output: docs/benchmarks.md (machine line, summary table, per-scenario details),
//! docs/benchmarks.json (the raw numbers) and the summary between the bench markers of README.md.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result};
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

pub struct Row {
    pub scenario: String,
    pub ours: String,
    pub peer: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
    /// For the closing note when missed: what the profile showed, what would close it.
    pub why: String,
}

impl Row {
    fn why(mut self, s: impl Into<String>) -> Row {
        self.why = s.into();
        self
    }
}

pub struct Report {
    pub machine: String,
    date: String,
    config: String,
    rows: Vec<Row>,
    details: Vec<String>,
    notes: Vec<String>,
    raw: Map<String, Value>,
    interval_ms: u64,
    containers: usize,
    fork_iterations: u64,
    lifecycle_n: usize,
    curve_sampling_secs: u64,
    wrk_secs: u64,
    nofile: u64,
    /// The largest N the curve was asked for.
    curve_largest: usize,
}

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

/// A text of the report written by hand from the measurements (xtask/src/bench/<name>), read
/// when the report is written, so that it can be brought up to date while a run goes on.
fn prose(name: &str) -> String {
    let path = crate::workspace_root().join("xtask/src/bench").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

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
            details: Vec::new(),
            notes: Vec::new(),
            raw,
            interval_ms: c.interval_ms,
            containers: c.containers,
            fork_iterations: c.fork_iterations,
            lifecycle_n: c.lifecycle,
            curve_sampling_secs: c.curve_sampling_secs,
            wrk_secs: c.wrk_secs,
            nofile: ctx.nofile,
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
        self.details.push(format!(
            "### Admission\n\n{} launchers (`apptheus-exec -- sleep infinity`) started back to back in {:.1} s \
             on a host with {} other processes ({} once every launcher and its child run); the last container was \
             registered {:.1} s after the first launcher started ({:.1} containers/s). Per container, from its \
             launcher's start to its `apptheus_container_start_time_seconds`: median {:.1} ms, p99 {:.1} ms, max \
             {:.1} ms (launchers wait in the socket's backlog while earlier ones are registered). Registration \
             reads every process's /proc/<pid>/stat at least twice per container (to find the launcher's \
             descendants), so admitting N containers costs N times the host's process count, which the \
             launchers themselves raise.\n",
            a.n,
            a.spawn_s,
            a.host_processes,
            a.host_processes + 2 * a.n,
            a.total_s,
            a.n as f64 / a.total_s,
            lat.median,
            p99,
            lat.max
        ));
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
                "≤ 2×",
                Some(ratio <= 2.0),
            )
            .why(format!(
                "The floor reads the probes and nothing else. The daemon reads them the same way (kept \
                 open, one pread each), and besides (a) reads again what can move in an idle container \
                 every 30 s ({} opens per pass at {} containers; the same-files floor, which does that \
                 too, costs {:.2}%, and the daemon is {files_ratio:.2}× of it), and (b) is a whole daemon: \
                 its eBPF event ring is read every 250 ms when nothing happens (every 20 ms after an event), \
                 each pass is handed to a blocking thread and back, the process counters come in one batched map \
                 read. What the profile shows of each is in the Sampling section; the scale curve's \
                 smallest N shows the part that does not grow with N.",
                s.files_per_pass,
                s.containers,
                s.files_floor_pct,
            )),
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
            .why(format!(
                "The probe floor costs {:.2}% of a core and the same-files floor {:.2}%; the daemon's \
                 {:.2} points above the latter are its own work per container and pass (a profile is in \
                 the Sampling section).",
                s.floor_pct,
                s.files_floor_pct,
                s.daemon_pct - s.files_floor_pct
            )),
        );
        self.push(super::row(
            "Sampling CPU, % of one core (vs the same-files floor)",
            super::fmt_pct(s.daemon_pct),
            super::fmt_pct(s.files_floor_pct),
            format!("{files_ratio:.2}×"),
            "(reported)",
            None,
        ));
        let kinds = s
            .by_kind
            .iter()
            .map(|(k, n)| format!("`{k}` ×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.details.push(format!(
            "### Sampling cost\n\n{} containers, `--monitor.interval={}ms`, no scrapes, {:.0} s. Two floors \
             (`xtask/bench/floor.c`) run side by side with the daemon: **the floor** keeps every container's CPU \
             probe ({} files: v1 `cpuacct.usage`, else v2 `cpu.stat`) open and reads each with one `pread` at \
             offset 0 per pass, the least any reader of these files can do; **the same-files floor** does that \
             and also opens, reads and closes every other file the daemon opened, at the daemon's rate — {} opens \
             per pass, {} distinct paths, taken from `strace -f -e trace=openat` on the running daemon over 30 s: \
             {kinds} ({} of its reads failed).\n\n\
             | | % of one core, whole window | per 10 s slice: median (min–max) |\n| --- | --- | --- |\n\
             | apptheus | {:.2}% | {} |\n| floor (probes, pread) | {:.2}% | {} |\n| same-files floor | {:.2}% | {} |\n\n\
             One pass takes {:.1} ms of wall time (the daemon's `apptheus_sample_duration_seconds` over the window).\n\n{}\n{}",
            s.containers,
            self.interval_ms,
            s.window_s,
            s.probes,
            s.files_per_pass,
            s.distinct,
            s.floor_failed,
            s.daemon_pct,
            s.daemon_slices.show(2),
            s.floor_pct,
            s.floor_slices.show(2),
            s.files_floor_pct,
            s.files_floor_slices.show(2),
            s.pass_ms,
            prose("profile.md"),
            s.profile.as_ref().map_or(String::new(), |p| format!(
                "\nThis run's profile of the idle daemon (`perf record -F 999 -g` for 20 s after the measured window; \
                 self time by symbol, 1.5% and more):\n\n```\n{p}\n```\n"
            )),
        ));
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
        let mut t = String::new();
        let _ = writeln!(
            t,
            "### Scrape at scale\n\n{} live containers; the same container series ({} groups of {:.1} series, {:.2} MB of \
             text) pushed into Pushgateway {} in {:.2} s (one `PUT /metrics/job/<container id>` per container, \
             sequentially over one connection). `wrk -t2 -c4 -d… --latency`, with and without \
             `Accept-Encoding: gzip`, alternating between the two servers. Medians over the runs (min–max). \
             CPU per scrape: the server's utime+stime over the run / requests.\n",
            self.containers,
            s.groups,
            s.series_per_group,
            s.container_text_bytes as f64 / 1e6,
            s.pg_version,
            s.load_s
        );
        let _ = writeln!(
            t,
            "| server, encoding | requests/s | p50 ms | p99 ms | bytes/response | CPU ms/scrape |\n| --- | --- | --- | --- | --- | --- |"
        );
        for (name, c) in [
            ("apptheus, gzip", &s.ours_gzip),
            ("Pushgateway, gzip", &s.pg_gzip),
            ("apptheus, plain", &s.ours_plain),
            ("Pushgateway, plain", &s.pg_plain),
        ] {
            let _ = writeln!(
                t,
                "| {name} | {} | {} | {} | {} | {} |",
                c.spread(|w| w.rps).show(0),
                c.spread(|w| w.p50_ms).show(2),
                c.spread(|w| w.p99_ms).show(2),
                c.bytes,
                c.spread(|w| w.cpu_ms_per_scrape).show(3),
            );
        }
        self.details.push(t);
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
            .why(
                "the container state itself is small; see the Memory section for what the scrape \
                 buffers add",
            ),
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
        self.details.push(format!(
            "### Memory\n\nVmRSS of the daemon: idle {idle:.1} MiB (before any container or scrape); with {} \
             containers, sampled and scraped once with gzip, {full:.1} MiB; after the wrk runs {stressed:.1} MiB; \
             after all of them ended and their retention passed {after:.1} MiB; after the lifecycle phase's {} \
             containers came and went too {after2:.1} MiB. Container cgroup directories left behind: {}.\n\n\
             What the wrk runs add is scrape buffers the allocator keeps: a plain scrape copies the whole cached \
             text into a new body (1.5 MB at 1,000 containers, up to 4 at a time), and each gzip scrape builds a \
             fresh compressor for the daemon's own few KB; glibc keeps freed large blocks in per-thread arenas \
             (`MALLOC_MMAP_THRESHOLD_=131072` cut it by about a third in a side experiment at 300 containers). \
             Serving the cached snapshot as shared `Bytes` (no copy) and writing the daemon's part as a stored \
             gzip member would remove both. The second cycle shows whether anything is left per container: \
             memory kept from the peak is reused, state left behind would add.\n",
            self.containers, self.lifecycle_n, ended.leftover_cgroups
        ));
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
            .why(format!(
                "Registration itself takes {:.1} ms (median); the series appear with the next sampling pass, \
                 so the worst case is one interval plus a pass plus the poll's own period ({:.1} ms per \
                 scrape, every 10 ms). Publishing a snapshot right after a container is admitted (daemon and \
                 registry, not changed here) would make it the registration time.",
                reg.median, l.poll_scrape_ms
            )),
        );
        self.push(super::row(
            &format!("Last exit → ended, max of {} (ms)", l.n),
            format!("{:.1}", end.max),
            "100".into(),
            format!("{:.2}×", end.max / 100.0),
            "≤ 100 ms",
            Some(end.max <= 100.0),
        ));
        self.details.push(format!(
            "### Lifecycle latency\n\n{} containers started 20 ms apart while a poller scraped /metrics every 10 ms \
             (a scrape took {:.1} ms on average); then ended (launcher and child killed by pid) 20 ms apart.\n\n\
             | | median | p99 | max |\n| --- | --- | --- | --- |\n\
             | launcher start → registered (start_time_seconds) | {:.1} | {:.1} | {:.1} |\n\
             | launcher start → visible on /metrics (first poll showing it) | {:.1} | {:.1} | {:.1} |\n\
             | kill → marked ended (end_time_seconds) | {:.1} | {:.1} | {:.1} |\n\
             | all {} containers killed at once ({:.1} s to kill them): kill → ended | {:.1} | {:.1} | {:.1} |\n\n\
             Visible waits for the next sampling pass by design (the series are rendered once per pass), so it is \
             bounded by one interval plus a pass, plus the poll's period. Ended is taken from the daemon's own \
             timestamp of the exit event, measured from just before the kill: it includes the processes' exit.\n",
            l.n,
            l.poll_scrape_ms,
            reg.median,
            q(&l.registered_ms),
            reg.max,
            vis.median,
            q(&l.visible_ms),
            vis.max,
            end.median,
            q(&l.ended_ms),
            end.max,
            e.n,
            e.kill_s,
            bulk.median,
            q(&e.ended_ms),
            bulk.max,
        ));
    }

    pub fn hooks(&mut self, a1: &Loops, b: &WithDaemon, a2: &Loops) {
        let mut raw = Map::new();
        let mut t = format!(
            "### eBPF hook cost\n\nThe host's loops (`xtask/bench/forkloop.c`, untracked processes, each child \
             waited for), {} iterations per run; A before the daemon started, B while it tracked {} containers, A \
             again after it stopped. Pinning: {}. Slowdown: median of B against the median of both A phases.\n\n\
             | loop | A before, us/iteration | B (daemon), us/iteration | A after, us/iteration | slowdown |\n\
             | --- | --- | --- | --- | --- |\n",
            self.fork_iterations, self.containers, b.pinned
        );
        let mut bpf_rows = Vec::new();
        for (exec, name) in [(false, "fork+exit"), (true, "fork+execve(/bin/true)+exit")] {
            let (sa, sb, slow) = hooks::slowdown(a1, &b.loops, a2, exec);
            let ns = |l: &Loops| {
                if exec {
                    l.exec_ns.clone()
                } else {
                    l.exit_ns.clone()
                }
            };
            let pick = |l: &Loops| {
                let v: Vec<f64> = ns(l).iter().map(|x| x / 1000.0).collect();
                Spread::of(&v)
            };
            let _ = writeln!(
                t,
                "| {name} | {} | {} | {} | {slow:+.2}% |",
                pick(a1).show(1),
                pick(&b.loops).show(1),
                pick(a2).show(1)
            );
            let bpf_ns = if exec { b.exec_bpf_ns } else { b.exit_bpf_ns };
            let bpf_pct = bpf_ns / sa.median * 100.0;
            bpf_rows.push(format!(
                "| {name} | {bpf_ns:.0} | {:.1} | {bpf_pct:.2}% |",
                sa.median / 1000.0
            ));
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
                .why(format!(
                    "The two A phases (no daemon) differ by {a_drift:+.1}% from each other, so the A/B timing \
                     cannot resolve 1% on this machine in this run; the BPF run-time row below measures the \
                     programs directly."
                )),
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
        let _ = writeln!(
            t,
            "\nPer loop iteration (each loop run alone with the statistics on): the programs' total run time \
             against the iteration's time without the daemon. The programs run for every task on the host, so \
             other processes forking during the loop count too: an upper bound, and less noisy than the A/B \
             timing on a shared machine.\n\n| loop | BPF ns per iteration | A us per iteration | share |\n\
             | --- | --- | --- | --- |\n{}",
            bpf_rows.join("\n")
        );
        let _ = writeln!(
            t,
            "\nThe programs' own run time, from `kernel.bpf_stats_enabled=1` (on only for one extra loop of each kind, \
             {} iterations, then restored) and `bpftool prog show`:\n\n| program | runs | ns per run |\n| --- | --- | --- |",
            b.stats_iterations
        );
        let mut progs = Vec::new();
        for p in &b.progs {
            let per = p.run_time_ns as f64 / p.run_cnt.max(1) as f64;
            let _ = writeln!(t, "| `{}` | {} | {per:.0} |", p.name, p.run_cnt);
            progs.push(json!({"name": p.name, "run_cnt": p.run_cnt, "run_time_ns": p.run_time_ns, "ns_per_run": per}));
        }
        raw.insert("bpf_stats".into(), json!(progs));
        let _ = writeln!(
            t,
            "\nAgainst bpftrace in the same loops (its programs attached to the same tracepoints at the same \
             time, each doing one lookup in a hash map keyed by the current tgid: the least a process tracker \
             can do). The loops' processes are untracked, as almost every task on a host is:\n\n\
             | tracepoint | ours, ns per run | bpftrace, ns per run | ratio |\n| --- | --- | --- | --- |"
        );
        let mut reference = Vec::new();
        for (tracepoint, ours) in hooks::HOOKS {
            let (o, r) = (
                hooks::ns_per_run(&b.progs, ours),
                hooks::ns_per_run(&b.reference, tracepoint),
            );
            let show = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.0}"));
            let ratio = o.zip(r).map(|(o, r)| o / r);
            let _ = writeln!(
                t,
                "| `{tracepoint}` | {} | {} | {} |",
                show(o),
                show(r),
                ratio.map_or("—".to_string(), |x| format!("{x:.2}×"))
            );
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
                .why(
                    "Both sides ran in the same loops with the same statistics on; look at what the program \
                     does before its first lookup (`bpftool prog dump xlated`) and at the size of the map it \
                     looks into first.",
                ),
            );
        }
        raw.insert("bpftrace_reference".into(), json!(reference));
        raw.insert("pinning".into(), json!(b.pinned));
        self.raw.insert("hooks".into(), Value::Object(raw));
        self.details.push(t);
    }

    /// The scale curve: a table of every figure per N, the plots (`benchmarks-curve.png` in
    /// `out`), the growth of each figure from the smallest N to the largest, and the rows for
    /// the summary table (RSS and pass time at the largest N).
    pub fn curve(&mut self, points: &[Point], out: &Path) {
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
        let mut t = String::from("### Scale curve\n\n");
        let _ = writeln!(
            t,
            "The same scenarios at {} live containers, each N with a fresh daemon and light launchers \
             (`xtask/bench/launcher.c`: a C process that forks one sleeping child, connects to the socket as \
             apptheus-exec does, sends nothing and holds the connection; trusted by path). Sampling: {} s \
             side by side with both floors, no scrapes; scrapes: one `wrk -t2 -c4 -d{}s` run with and one \
             without gzip; lifecycle: {} containers started, then killed, one every 20 ms next to the N live, \
             while a poller scraped /metrics back to back (every 10 ms at most); then all N killed at once. \
             `kernel.pid_max` raised for the curve where it was too small, restored after.{}\n",
            points
                .iter()
                .map(|p| p.n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.curve_sampling_secs,
            self.wrk_secs,
            points[0].life.n,
            if points[0].network {
                String::new()
            } else {
                format!(
                    " **The network collector was off for the whole curve** (`--collector.disable=network`: its two \
                     programs are not attached, two descriptors less per container): each container holds its \
                     launcher's connection and two BPF links in the daemon, and {} of them do not fit in this \
                     machine's descriptor limit ({}; the hard limit here cannot be raised without \
                     CAP_SYS_RESOURCE, which this sandbox lacks). On a host whose limit allows it \
                     (systemd's default hard limit is 524288), they stay on.",
                    self.curve_largest, self.nofile
                )
            }
        );
        let _ = write!(t, "| figure |");
        for p in points {
            let _ = write!(t, " N = {} |", p.n);
        }
        let _ = write!(t, " growth |\n| --- |");
        for _ in points {
            let _ = write!(t, " --- |");
        }
        t.push_str(" --- |\n");
        let (first, last) = (&points[0], &points[points.len() - 1]);
        let span = (last.n as f64 / first.n as f64).ln();
        let mut faster = Vec::new();
        for (label, digits, f, cost) in &figures {
            let _ = write!(t, "| {label} |");
            for p in points {
                let _ = write!(t, " {:.digits$} |", f(p));
            }
            let (a, b) = (f(first), f(last));
            let growth = if points.len() > 1 && a > 0.0 && b > 0.0 && span > 0.0 {
                let k = (b / a).ln() / span;
                if *cost && k > 1.2 {
                    faster.push(*label);
                }
                format!("N^{k:.2}")
            } else {
                "—".into()
            };
            let _ = writeln!(t, " {growth} |");
        }
        let _ = writeln!(
            t,
            "\nGrowth: the exponent k of N^k between the smallest and the largest N (1 is linear; a cost \
             whose k is above 1.2 grows faster than N).\n"
        );
        let png = out.join("benchmarks-curve.png");
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
        let panels = vec![
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
        ];
        match super::plot::draw(&png, &panels) {
            Ok(()) => {
                let _ = writeln!(
                    t,
                    "![Each figure against N, log-log; the dotted line is linear growth from the smallest N](benchmarks-curve.png)\n"
                );
            }
            Err(e) => self
                .notes
                .push(format!("The curve's plot was not drawn: {e:#}")),
        }
        t.push_str(&prose("curve.md"));
        if !faster.is_empty() {
            let _ = writeln!(
                t,
                "\nFaster than linear in this run: {}.",
                faster.join("; ")
            );
        }
        self.details.push(t);

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
                .why("see the closing note for where it stopped"),
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
                "well under (≤ 0.2×)",
                Some(pass <= 0.2 * interval),
            )
            .why("see the Scale curve section for what grows with N"),
        );
        self.push(super::row(
            &format!(
                "Sampling CPU at {} idle containers, % of one core (vs C floor)",
                last.n
            ),
            super::fmt_pct(last.sampling.daemon_pct),
            super::fmt_pct(last.sampling.floor_pct),
            format!("{:.2}×", last.sampling.daemon_pct / last.sampling.floor_pct),
            "(reported)",
            None,
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
            .why("see the Scale curve and Memory sections"),
        );
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
            .why("the Scale curve section says why each grows as it does"),
        );
    }

    fn table(&self) -> String {
        let mut t = String::from(
            "| scenario | apptheus | peer or floor | ratio | target | met? |\n| --- | --- | --- | --- | --- | --- |\n",
        );
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {met} |",
                r.scenario, r.ours, r.peer, r.ratio, r.target
            );
        }
        t
    }

    pub fn write(&mut self, out: &Path, readme: bool) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let missed: Vec<&Row> = self.rows.iter().filter(|r| r.met == Some(false)).collect();
        let mut md = format!(
            "# Benchmarks\n\nWritten by `cargo xtask bench` on {}.\n\n**Machine:** {}\n\n**Run:** {}\n\n\
             Absolute times on a shared VM are noisy; the ratios, measured in the same run, are the figures that \
             count. Raw numbers: [benchmarks.json](benchmarks.json).\n\n{}\n",
            self.date,
            self.machine,
            self.config,
            self.table()
        );
        for d in &self.details {
            md.push('\n');
            md.push_str(d);
        }
        md.push_str("\n## Closing note\n\n");
        if missed.is_empty() && self.notes.is_empty() {
            md.push_str("Every target was met in this run.\n");
        } else {
            for r in &missed {
                let _ = writeln!(
                    md,
                    "- Missed: {}: apptheus {}, peer or floor {}, ratio {}; target {}.{}",
                    r.scenario,
                    r.ours,
                    r.peer,
                    r.ratio,
                    r.target,
                    if r.why.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", r.why)
                    }
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(md, "- {n}");
        }
        let md_path = out.join("benchmarks.md");
        // The soak's section (`cargo xtask soak`) is its own: kept as it is.
        let old = std::fs::read_to_string(&md_path).unwrap_or_default();
        if let (Some(b), Some(e)) = (old.find(super::soak::BEGIN), old.find(super::soak::END))
            && e > b
        {
            md.push('\n');
            md.push_str(&old[b..e + super::soak::END.len()]);
            md.push('\n');
        }
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
        let new = self.readme_text(&text);
        std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))
    }

    /// README.md's `text` with this run's summary in it (apart from the write, for the tests).
    fn readme_text(&self, text: &str) -> String {
        let block = format!(
            "{BEGIN}\nMeasured by `cargo xtask bench` on {} — {}. Details, method and the closing note: \
             [docs/benchmarks.md](docs/benchmarks.md).\n\n{}{END}",
            self.date,
            self.machine,
            self.table()
        );
        if let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) {
            format!("{}{block}{}", &text[..b], &text[e + END.len()..])
        } else if let Some(h) = text.find("\n## Benchmarks\n") {
            let body = h + "\n## Benchmarks\n".len();
            let next = text[body..]
                .find("\n## ")
                .map_or(text.len(), |i| body + i + 1);
            format!(
                "{}\n`cargo xtask bench` (as root; about 15 minutes, not part of `cargo xtask test`) installs \
                 Pushgateway, wrk, strace and bpftool from Debian, runs every scenario side by side and rewrites \
                 this table; `--containers N` and `--quick` (writes to target/bench-quick) for development.\n\n{block}\n{}",
                &text[..body],
                &text[next..]
            )
        } else {
            format!("{text}\n## Benchmarks\n\n{block}\n")
        }
    }
}

#[cfg(test)]
mod tests;
