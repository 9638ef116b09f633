//! The report rendered from fixed, plausible measurements, compared byte for byte with the
//! files in `testdata/`: a change to the report's code or templates that changes what it writes
//! shows here. `XTASK_BLESS=1 cargo test -p xtask report` writes the files anew (then read the
//! diff). The hand-written prose (profile.md, curve.md) is a stand-in and no plot is drawn, so
//! that editing those texts or a machine without the plots' font changes nothing here.
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use super::{Prose, Report};
use crate::bench::{
    Admission, BenchArgs, Config, Ctx,
    curve::Point,
    hooks::{Loops, ProgStat, WithDaemon},
    lifecycle::{Ended, Life},
    sampling::Sampling,
    scrape::{Case, Scrape, Wrk},
    sys::Spread,
};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/bench/report/testdata")
        .join(name)
}

/// `actual` against the file `name` of testdata (written instead with XTASK_BLESS=1).
fn check(name: &str, actual: &str) {
    let path = testdata(name);
    if std::env::var_os("XTASK_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (XTASK_BLESS=1 writes it)", path.display()));
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(e, a)| e != a)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from {} from line {}:\nexpected: {:?}\nactual:   {:?}",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

/// Stand-ins for xtask/src/bench/profile.md and curve.md.
fn prose() -> Prose {
    Prose {
        profile: "(profile.md: what the profile showed, by hand)\n".into(),
        curve: "(curve.md: how each figure grows, and why)\n".into(),
    }
}

/// A directory of its own for one test's output, empty.
fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn args(quick: bool, curve_only: bool, curve: Option<&str>) -> BenchArgs {
    BenchArgs {
        containers: None,
        quick,
        curve: curve.map(str::to_string),
        curve_only,
        sampling_secs: None,
    }
}

/// A report as the bench starts it, with a fixed date and machine.
fn report(args: &BenchArgs, nofile: u64) -> Report {
    let ctx = Ctx {
        cfg: Config::new(args).unwrap(),
        release: PathBuf::from("/nonexistent/release"),
        tmp: PathBuf::from("/nonexistent/tmp"),
        parent: "apptheus-bench-test".into(),
        started: Instant::now(),
        nofile,
    };
    let mut r = Report::new(&ctx).unwrap();
    r.date = "2026-12-01 03:20 UTC".into();
    r.machine = "Test CPU @ 2.00GHz, 2 cores, 24 GiB RAM, Linux 6.1.0-test, cgroup v2; load average 0.10 0.20 0.30 at start".into();
    r.children_files = false;
    r.raw.insert("date".into(), r.date.clone().into());
    r.raw.insert("machine".into(), r.machine.clone().into());
    r
}

/// `n` values from `lo` spread unevenly up to `lo + span` (deterministic).
fn values(n: usize, lo: f64, span: f64) -> Vec<f64> {
    (0..n)
        .map(|i| lo + span * ((i * 37 % 101) as f64 / 100.0).powi(3))
        .collect()
}

fn admission(n: usize, total_s: f64, host_processes: usize) -> Admission {
    Admission {
        n,
        total_s,
        spawn_s: total_s * 0.3,
        latency_ms: values(n, 4.0, 60.0),
        host_processes,
    }
}

fn sampling(containers: usize, daemon_pct: f64, floor_pct: f64, profile: bool) -> Sampling {
    Sampling {
        containers,
        window_s: 60.0,
        daemon_pct,
        daemon_slices: Spread::of(&[
            daemon_pct * 0.97,
            daemon_pct,
            daemon_pct * 1.05,
            daemon_pct * 0.99,
            daemon_pct * 1.01,
            daemon_pct * 0.98,
        ]),
        floor_pct,
        floor_slices: Spread::of(&[floor_pct * 0.96, floor_pct, floor_pct * 1.03]),
        files_floor_pct: floor_pct * 1.4,
        files_floor_slices: Spread::of(&[floor_pct * 1.38, floor_pct * 1.4, floor_pct * 1.45]),
        probes: containers,
        files_per_pass: containers / 4 + 3,
        distinct: containers * 7,
        floor_failed: 2,
        by_kind: vec![
            ("memory.stat".into(), containers / 8),
            ("pids.current".into(), containers / 16),
            ("io.stat".into(), 3),
        ],
        pass_ms: containers as f64 * 0.0043 + 0.2,
        profile: profile.then(|| {
            "  21.40%  apptheus  [kernel.kallsyms]  [k] vfs_read\n   6.02%  apptheus  apptheus  [.] apptheus::sampler::Sampler::pass\n   1.51%  apptheus  libc.so.6  [.] __memcmp_evex_movbe".into()
        }),
    }
}

fn wrk(rps: f64, cpu_ms: f64) -> Wrk {
    Wrk {
        rps,
        p50_ms: 400.0 / rps,
        p99_ms: 1100.0 / rps,
        requests: rps * 10.0,
        cpu_ms_per_scrape: cpu_ms,
    }
}

fn case(bytes: usize, runs: &[(f64, f64)]) -> Case {
    Case {
        runs: runs.iter().map(|&(r, c)| wrk(r, c)).collect(),
        bytes,
    }
}

fn life(n: usize, visible_max: f64) -> Life {
    Life {
        n,
        visible_ms: values(n, 30.0, visible_max - 30.0),
        registered_ms: values(n, 2.0, 9.0),
        ended_ms: values(n, 3.0, 40.0),
        poll_scrape_ms: 3.4,
    }
}

fn ended(n: usize, leftover_cgroups: usize) -> Ended {
    Ended {
        n,
        ended_ms: values(n, 20.0, 900.0),
        kill_s: 1.9,
        leftover_cgroups,
    }
}

fn loops(exit_us: f64, exec_us: f64) -> Loops {
    Loops {
        exit_ns: vec![exit_us * 1000.0, exit_us * 1012.0],
        exec_ns: vec![exec_us * 1000.0, exec_us * 995.0],
    }
}

fn prog(name: &str, run_cnt: u64, ns_per_run: u64) -> ProgStat {
    ProgStat {
        name: name.into(),
        run_cnt,
        run_time_ns: run_cnt * ns_per_run,
    }
}

/// One N of the curve; `k` scales the costs that grow with N.
fn point(n: usize, network: bool, k: f64) -> Point {
    Point {
        n,
        admission: admission(n, n as f64 * 0.004 * k, 180 + n),
        rss_mib: 5.0 + n as f64 * 0.0071,
        rss_after_wrk_mib: 7.0 + n as f64 * 0.0093,
        sampling: Sampling {
            // k² so that the pass grows faster than N at the largest N (a cost without a
            // documented reason, and past a fifth of the interval).
            pass_ms: n as f64 * 0.0043 * k * k + 0.2,
            ..sampling(
                n,
                0.3 + n as f64 * 0.0013 * k,
                0.15 + n as f64 * 0.0006,
                false,
            )
        },
        gzip: wrk(120_000.0 / n as f64, 0.021 * n as f64 / 100.0),
        plain: wrk(90_000.0 / n as f64, 0.044 * n as f64 / 100.0),
        gzip_bytes: 180 * n,
        plain_bytes: 3100 * n,
        life: life(20, 480.0 + n as f64 * 0.01),
        bulk: ended(n, 0),
        leftover_cgroups: 0,
        fds: 12 + n * if network { 4 } else { 2 },
        network,
    }
}

/// A whole run: every phase, the curve at 100, 1,000 and 10,000 (the network collector off
/// for lack of descriptors), a note, the soak's section kept.
#[test]
fn full_run() {
    let mut r = report(&args(false, false, None), 65_536);
    r.admission(&admission(1000, 12.34, 180));
    r.sampling(&sampling(1000, 1.62, 0.72, true));
    r.scrape(&Scrape {
        ours_gzip: case(182_000, &[(2410.0, 0.81), (2388.0, 0.83)]),
        ours_plain: case(3_100_000, &[(512.0, 3.9), (530.0, 3.7)]),
        pg_gzip: case(176_000, &[(41.0, 95.0), (43.5, 92.0)]),
        pg_plain: case(3_300_000, &[(55.0, 70.0), (54.0, 71.5)]),
        pg_version: "1.5.1".into(),
        groups: 1000,
        series_per_group: 41.3,
        load_s: 7.25,
        container_text_bytes: 3_050_000,
    });
    r.lifecycle(&life(200, 540.0), &ended(1000, 0));
    // Past the 32 MiB target, and a cgroup left: both rows missed.
    r.memory([6.1, 34.2, 41.2, 30.0, 30.3], &ended(1000, 1));
    r.note("The daemon did not stop cleanly (Some(ExitStatus(unix_wait_status(9)))); its log ends:\n\n```\nlevel=info msg=\"stopping\"\n```".into());
    let b = WithDaemon {
        loops: loops(53.1, 318.0),
        progs: vec![
            prog("task_newtask", 200_000, 180),
            prog("sched_process_exec", 100_000, 95),
            prog("sched_process_exit", 200_000, 240),
        ],
        // No reference on the exec tracepoint: its row shows "—".
        reference: vec![
            prog("task_newtask", 200_000, 120),
            prog("sched_process_exit", 200_000, 130),
        ],
        stats_iterations: 100_000,
        exit_bpf_ns: 840.0,
        exec_bpf_ns: 1210.0,
        pinned: "the loops on CPU 1, the daemon on CPU 0".into(),
    };
    r.hooks(&loops(52.0, 310.0), &b, &loops(52.9, 316.5));
    let out = out_dir("full");
    std::fs::write(
        out.join("benchmarks.md"),
        "# Benchmarks\n\nold text\n\n<!-- soak:begin -->\n## Soak\n\nkept as it is\n<!-- soak:end -->\n",
    )
    .unwrap();
    let points = [
        point(100, false, 1.0),
        point(1000, false, 1.1),
        point(10_000, false, 3.0),
    ];
    r.curve_drawn(&points, true);
    r.write_with(&out, false, &prose()).unwrap();
    let md = std::fs::read_to_string(out.join("benchmarks.md")).unwrap();
    let json = std::fs::read_to_string(out.join("benchmarks.json")).unwrap();
    let mut at = 0;
    for key in [
        "# Benchmarks\n\nWritten by `cargo xtask bench` on 2026-12-01 03:20 UTC.\n",
        "| Admission of 1000 containers (s) | 12.3 | — | — | (reported) | — |\n",
        "### Admission\n",
        "### Sampling cost\n",
        "| apptheus | 1.62% | 1.61 (1.57–1.70, n=6) |\n",
        "(profile.md: what the profile showed, by hand)\n",
        "This run's profile of the idle daemon",
        "### Scrape at scale\n",
        "### Lifecycle latency\n",
        "### Memory\n",
        "### eBPF hook cost\n",
        "| `sched_process_exec` | 95 | — | — |\n",
        "### Scale curve\n",
        "**The network collector was off for the whole curve**",
        "| figure | N = 100 | N = 1000 | N = 10000 | growth |\n",
        "](benchmarks-curve.png)\n",
        "(curve.md: how each figure grows, and why)\n",
        "\nFaster than linear in this run: admission of all N, s; sampling pass",
        "\n## Closing note\n\n- Missed: Sampling CPU",
        "target ≤ 1.5×. The floor reads the probes and nothing else.",
        "- The daemon did not stop cleanly",
        "\n<!-- soak:begin -->\n## Soak\n\nkept as it is\n<!-- soak:end -->\n",
    ] {
        let found = md[at..]
            .find(key)
            .unwrap_or_else(|| panic!("{key:?} not found after byte {at} of:\n{md}"));
        at += found + key.len();
    }
    assert!(json.contains("\"rows\": ["), "{json}");
    check("full.md", &md);
    check("full.json", &json);

    for (name, readme) in [
        (
            "readme-markers.md",
            "# apptheus\n\n## Benchmarks\n\nSummary:\n\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\n\n## License\n\nMIT\n",
        ),
        (
            "readme-section.md",
            "# apptheus\n\n## Benchmarks\n\nold words\n\n## License\n\nMIT\n",
        ),
        ("readme-none.md", "# apptheus\n\nA daemon.\n"),
    ] {
        let new = r.readme_text(readme).unwrap();
        assert!(new.starts_with("# apptheus\n"), "{new}");
        assert!(
            new.contains("<!-- bench:begin -->\nMeasured by `cargo xtask bench` on 2026-12-01 03:20 UTC — Test CPU"),
            "{new}"
        );
        assert_eq!(new.matches("<!-- bench:end -->").count(), 1, "{new}");
        check(name, &new);
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// A curve-only run whose curve stopped before its largest N (the network collector on).
#[test]
fn curve_stopped() {
    let mut r = report(&args(false, true, None), 1 << 20);
    r.note("The scale curve stopped: not all 100 containers were registered within 80s (0 launchers exited); daemon log:".into());
    let out = out_dir("stopped");
    // The plots were not drawn: no image in the section.
    r.curve_drawn(&[point(20, true, 1.0), point(50, true, 1.3)], false);
    r.write_with(&out, false, &prose()).unwrap();
    check(
        "stopped.md",
        &std::fs::read_to_string(out.join("benchmarks.md")).unwrap(),
    );
    check(
        "stopped.json",
        &std::fs::read_to_string(out.join("benchmarks.json")).unwrap(),
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// A one-N curve that met every target: the closing note says so.
#[test]
fn every_target_met() {
    let mut r = report(&args(false, true, Some("100")), 1 << 20);
    let out = out_dir("met");
    r.curve_drawn(&[point(100, true, 1.0)], true);
    r.write_with(&out, false, &prose()).unwrap();
    let md = std::fs::read_to_string(out.join("benchmarks.md")).unwrap();
    assert!(md.contains("Every target was met in this run."), "{md}");
    check("met.md", &md);
    check(
        "met.json",
        &std::fs::read_to_string(out.join("benchmarks.json")).unwrap(),
    );
    let _ = std::fs::remove_dir_all(&out);
}
