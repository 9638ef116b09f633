//! apptheus against the real Prometheus tools: `promtool` lints its output and the deployment
//! files, a real `prometheus` server scrapes a live daemon and answers every query of the Grafana
//! dashboard, `systemd-analyze` verifies the unit, and docs/metrics.md's metric table is compared with
//! what the daemon really exposes.
//!
//! Every test runs as root on the real kernel and fails (never skips) when a tool is missing:
//! `cargo xtask setup --test` installs them (Debian packages `prometheus` and `systemd`).
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{
    Daemon, Workload, bin,
    cgroups::{self, TestCgroup},
    eventually,
    prometheus::{Answer, Prometheus, tool},
    sample,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// The window substituted for Grafana's `$__rate_interval`: five scrapes at the 1 s interval the
/// test's Prometheus uses, so rate() has enough samples a few seconds after the first scrape.
const RATE_INTERVAL: &str = "5s";
/// Limits of the test-made cgroup: high enough for the workloads, low enough to be real limits.
const MEMORY_LIMIT: u64 = 256 * 1024 * 1024;
const PIDS_LIMIT: u64 = 64;
/// What the workload in the limited cgroup allocates (MiB).
const LIMITED_ALLOC_MIB: u64 = 64;
/// The CPU quota of the test-made cgroup: half a CPU (per 100 ms period), so that the limited
/// container has its own CFS bandwidth counters on every layout (on pure v2 only a cgroup with
/// the cpu controller has them).
const CPU_QUOTA_US: u64 = 50_000;

// ------------------------------------------------------------------------------------- helpers

/// The workspace root (deploy/ and docs/metrics.md live there).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Run `cmd` to completion and print what it said (the suite runs with --nocapture in CI).
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    println!("$ {cmd:?}\n  -> {}", out.status);
    print_output(&out);
    out
}

fn print_output(out: &Output) {
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        if !text.trim().is_empty() {
            println!("  {name}:\n{}", indent(&text));
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `container="<id>"` of an apptheus-exec launcher.
fn exec_id(pid: i32) -> String {
    format!("apptheus-exec_{pid}")
}

/// A launcher (apptheus-exec running the workload) that is stopped when dropped, even when the
/// test fails half-way: its command's processes are killed by pid, after which apptheus-exec
/// exits by itself (128+9). SIGKILL, so that the whole tree goes at once, wherever the workload
/// is (a `wait` or a long `burn`).
struct Launcher(Workload);

impl Launcher {
    fn pid(&self) -> i32 {
        self.0.pid()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.0.child.try_wait().ok().flatten().is_some() {
            return;
        }
        for p in common::descendants(self.0.pid()) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        // If it is still there after that, Workload's own Drop kills and reaps the launcher.
        let _ = eventually(Duration::from_secs(5), || {
            self.0.child.try_wait().ok().flatten()
        });
    }
}

/// A cgroup made by the test with a memory and a pids limit and a CPU quota (one directory in
/// each of the memory, pids and cpu hierarchies on v1 and hybrid hosts, one on pure v2), for a
/// launcher to start in: the daemon nests the container below it
/// (`--cgroup.placement=nested`), so its `spec_memory_limit_bytes` and `spec_pids_limit` series
/// exist, and its CFS throttling counters.
fn limited_cgroup() -> TestCgroup {
    let cg = TestCgroup::new("apptheus-test-prom", &["memory", "pids", "cpu"]);
    cg.limit_memory(MEMORY_LIMIT);
    cg.limit_pids(PIDS_LIMIT);
    cg.limit_cpu(CPU_QUOTA_US);
    cg
}

/// A daemon with two live containers: one plain launcher (allocates 16 MiB, then burns
/// `burn_secs` of CPU) and one started inside a `limited_cgroup` (allocates 64 MiB). Both
/// allocations run once the process is in its container's cgroup, so they are charged to it.
/// Fields drop in order: the launchers end before the daemon stops and the cgroups go.
struct Live {
    plain: Launcher,
    limited: Launcher,
    daemon: Daemon,
    _cgroup: TestCgroup,
}

impl Live {
    fn start(burn_secs: f64) -> Live {
        let cgroup = limited_cgroup();
        let daemon = Daemon::start(&["--monitor.interval=200ms"]);
        let burn = format!("burn:{burn_secs}");
        let mut plain =
            Launcher(daemon.exec_workload(&["ready", "wait", "alloc:16", "ready", &burn, "wait"]));
        let alloc = format!("alloc:{LIMITED_ALLOC_MIB}");
        let script = format!(
            "{}exec {} --socket={} -- {} ready wait {alloc} ready wait",
            cgroup.enter_script(),
            bin("apptheus-exec").display(),
            daemon.socket.display(),
            common::workload_bin().display()
        );
        // A job's environment, so that every label of the job series shows.
        let mut limited = Launcher(Workload::spawn_cmd(
            Command::new("sh")
                .args(["-c", &script])
                .env("SLURM_JOB_ID", "4242")
                .env("SLURM_JOB_ACCOUNT", "proj1")
                .env("SLURM_JOB_PARTITION", "batch")
                .env("APPTAINER_CONTAINER", "/images/test.sif"),
        ));
        for l in [&mut plain, &mut limited] {
            l.0.ready();
            let label = format!("container=\"{}\"", exec_id(l.pid()));
            eventually(Duration::from_secs(5), || {
                daemon.metrics().contains(&label).then_some(())
            })
            .unwrap_or_else(|| {
                panic!(
                    "container {label} not in /metrics within 5 s:\n{}",
                    daemon.log_text()
                )
            });
            l.0.go();
            assert_eq!(l.0.line(), "alloc ok");
            l.0.ready();
        }
        // A container that has ended (exit 3), retained: the dashboard's exit-code panel.
        let mut ended = daemon.exec_workload(&["ready", "wait", "exit:3"]);
        ended.ready();
        let label = format!("container=\"{}\"", exec_id(ended.pid()));
        eventually(Duration::from_secs(5), || {
            daemon.metrics().contains(&label).then_some(())
        })
        .unwrap_or_else(|| panic!("container {label} not in /metrics within 5 s"));
        ended.go();
        assert_eq!(ended.wait().code(), Some(3));
        let limited_label = format!("container=\"{}\"", exec_id(limited.pid()));
        eventually(Duration::from_secs(5), || {
            let m = daemon.metrics();
            let mem = sample(
                &m,
                "apptheus_container_spec_memory_limit_bytes",
                &limited_label,
            )?;
            let pids = sample(&m, "apptheus_container_spec_pids_limit", &limited_label)?;
            (mem == MEMORY_LIMIT as f64 && pids == PIDS_LIMIT as f64).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the limited container never showed its limits ({MEMORY_LIMIT} bytes, {PIDS_LIMIT} pids):\n{}",
                daemon.metrics()
            )
        });
        Live {
            plain,
            limited,
            daemon,
            _cgroup: cgroup,
        }
    }
}

/// The float value of one series of a vector answer.
fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------- the dashboard's queries

/// Every query the dashboard runs: each `expr` anywhere in it, then the selector of each
/// `label_values(SELECTOR, label)` template variable (from `query`, a string or an object with
/// a `query`, and from `definition`), with Grafana's variables substituted; no duplicates.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn exprs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(e)) = map.get("expr")
                    && !e.trim().is_empty()
                {
                    out.push(e.clone());
                }
                map.values().for_each(|v| exprs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut raw = Vec::new();
    exprs(dashboard, &mut raw);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
    {
        let query = var["query"]["query"].as_str().or(var["query"].as_str());
        for text in [query, var["definition"].as_str()].into_iter().flatten() {
            if let Some(sel) = label_values_selector(text) {
                raw.push(sel);
            }
        }
    }
    let mut seen = BTreeSet::new();
    raw.iter()
        .map(|e| substitute(&e.split_whitespace().collect::<Vec<_>>().join(" ")))
        .filter(|e| seen.insert(e.clone()))
        .collect()
}

/// `label_values(SELECTOR, label)` -> SELECTOR. The one-argument form has no selector to run.
fn label_values_selector(text: &str) -> Option<String> {
    let inner = text
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    // The label is after the last comma (the selector's matchers contain commas too).
    let (selector, _label) = inner.rsplit_once(',')?;
    Some(selector.trim().to_string())
}

/// Grafana's variables -> values Prometheus accepts: `$__rate_interval` and `$__interval` ->
/// RATE_INTERVAL, `$__range` -> 1h, every template variable (`$var`, `${var}`, `${var:format}`;
/// the dashboard uses them only in `=~` matchers) -> `.*`.
fn substitute(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(j) => (braced[..j].split(':').next().unwrap_or(""), j + 2),
                None => ("", 0),
            },
            None => {
                let n = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..n], n)
            }
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(match name {
                "__rate_interval" | "__interval" => RATE_INTERVAL,
                "__range" => "1h",
                _ => ".*",
            });
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

// ----------------------------------------------------------------- the text exposition format

/// One exposed metric family: its `# TYPE` and the label names its samples carry (`le` and
/// `quantile` of histograms and summaries left out).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
}

fn exposed_families(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            families.entry(name.into()).or_default().kind = kind.trim().into();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        // A histogram's samples are <family>_bucket, _sum and _count.
        let family = std::iter::once(name)
            .chain(
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| name.strip_suffix(s)),
            )
            .find(|f| families.contains_key(*f))
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE before it"))
            .to_string();
        let labels = match line[end..].strip_prefix('{') {
            Some(inner) => label_names(inner),
            None => Vec::new(),
        };
        let f = families.get_mut(&family).expect("family");
        f.labels
            .extend(labels.into_iter().filter(|l| l != "le" && l != "quantile"));
    }
    families
}

/// The label names of `a="x",b="y\"z"} 1` (the text after a sample's `{`).
fn label_names(mut s: &str) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.starts_with('}') || s.is_empty() {
            return names;
        }
        let (name, rest) = s.split_once("=\"").expect("label=\"value\"");
        names.push(name.trim().to_string());
        // Skip the value, minding backslash escapes.
        let mut chars = rest.char_indices();
        let mut close = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    close = i;
                    break;
                }
                _ => {}
            }
        }
        s = &rest[(close + 1).min(rest.len())..];
    }
}

/// One row of docs/metrics.md's metric table: | `name` | type | labels | meaning |.
#[derive(Debug)]
struct Row {
    name: String,
    kind: String,
    labels: BTreeSet<String>,
}

fn readme_table(readme: &str) -> Vec<Row> {
    let begin = readme
        .find("<!-- metrics:begin -->")
        .expect("docs/metrics.md has no <!-- metrics:begin --> line");
    let end = readme
        .find("<!-- metrics:end -->")
        .expect("docs/metrics.md has no <!-- metrics:end --> line");
    assert!(begin < end, "metrics:end before metrics:begin");
    let mut rows = Vec::new();
    for line in readme[begin..end].lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        // The header and the |---| line have no `name` in backticks.
        let Some(name) = cells[0].strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        assert!(
            cells.len() >= 4,
            "docs/metrics.md row without 4 cells: {line}"
        );
        let labels = cells[2]
            .split(',')
            .map(str::trim)
            .filter(|l| {
                l.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .map(str::to_owned)
            .collect();
        rows.push(Row {
            name: name.into(),
            kind: cells[1].into(),
            labels,
        });
    }
    rows
}

// -------------------------------------------------------------------------------------- tests

/// The daemon's output, with live containers and every optional series, passes
/// `promtool check metrics` without a single finding.
#[test]
fn promtool_check_metrics_passes() {
    let promtool = tool("promtool", "prometheus");
    let live = Live::start(0.5);
    // Plain text, as a scraper that asks for no compression gets it.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .get(live.daemon.url("/metrics"))
        .header("Accept-Encoding", "identity")
        .call()
        .expect("GET /metrics");
    assert!(
        resp.headers().get("content-encoding").is_none(),
        "asked for identity, got {:?}",
        resp.headers().get("content-encoding")
    );
    let text = resp.body_mut().read_to_string().expect("body");
    for id in [exec_id(live.plain.pid()), exec_id(live.limited.pid())] {
        assert!(
            text.contains(&format!("container=\"{id}\"")),
            "{id} missing:\n{text}"
        );
    }
    for family in [
        "apptheus_container_spec_memory_limit_bytes",
        "apptheus_container_spec_pids_limit",
        "apptheus_sample_duration_seconds_bucket",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool");
    println!(
        "promtool check metrics on {} lines, {} families -> {}",
        text.lines().count(),
        text.matches("# TYPE ").count(),
        out.status
    );
    print_output(&out);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics found problems ({}):\n{}{}\n--- the exposition:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus scrapes a live daemon every second: the target is up, a burning container's
/// CPU rate is positive, a container's memory arrives with its labels, and every query of the
/// Grafana dashboard answers with data.
#[test]
fn real_prometheus_scrapes_the_daemon_and_dashboard_queries_return_data() {
    let started = Instant::now();
    scrape_and_query(started);
    // The launchers, Prometheus, the daemon and the test cgroup are gone by now.
    println!(
        "real Prometheus test took {:.1} s including cleanup",
        started.elapsed().as_secs_f64()
    );
}

fn scrape_and_query(started: Instant) {
    // The plain container burns for longer than the test lasts; it is stopped at the end.
    let live = Live::start(120.0);
    let prom = Prometheus::start(&format!("127.0.0.1:{}", live.daemon.port));
    let prom_ready = started.elapsed();
    let wait = Duration::from_secs(30);
    // What Prometheus and the daemon were doing, for a failure message.
    let diagnostics = || {
        let log = live.daemon.log_text();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- prometheus targets:\n{}\n--- prometheus log:\n{}\n--- daemon log (last 30 lines):\n{}",
            prom.agent
                .get(format!("{}/api/v1/targets", prom.url))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .unwrap_or_default(),
            prom.log(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    };
    let context = |what: &str, a: &Answer| format!("{what}: {a:?}\n{}", diagnostics());

    let up = prom.query_until("up{job=\"apptheus\"}", wait, |a| {
        a.series.first().is_some_and(|s| value(s) == 1.0)
    });
    assert!(
        up.series.len() == 1 && value(&up.series[0]) == 1.0,
        "{}",
        context("up{job=\"apptheus\"} never 1", &up)
    );

    let burner = exec_id(live.plain.pid());
    let cpu_rate = format!(
        "rate(apptheus_container_cpu_usage_seconds_total{{job=\"apptheus\", container=\"{burner}\"}}[{RATE_INTERVAL}])"
    );
    let cpu = prom.query_until(&cpu_rate, wait, |a| {
        a.find(&[("container", &burner)])
            .is_some_and(|s| value(s) > 0.0)
    });
    let s = cpu
        .find(&[("container", &burner), ("user", "root")])
        .unwrap_or_else(|| panic!("{}", context("no CPU rate for the burning container", &cpu)));
    assert!(value(s) > 0.0, "{}", context("CPU rate not > 0", &cpu));
    println!("{cpu_rate} = {:.3}", value(s));

    let limited = exec_id(live.limited.pid());
    let mem_query = format!(
        "apptheus_container_memory_usage_bytes{{job=\"apptheus\", container=\"{limited}\"}}"
    );
    let mem = prom.query_until(&mem_query, wait, |a| a.success_with_data());
    let s = mem
        .find(&[("container", &limited), ("user", "root")])
        .unwrap_or_else(|| {
            panic!(
                "{}",
                context("no memory series with container and user=\"root\"", &mem)
            )
        });
    // The 64 MiB were allocated after the workload was moved into the container's cgroup.
    assert!(
        value(s) >= (LIMITED_ALLOC_MIB * 1024 * 1024) as f64,
        "{}",
        context("memory usage below what the workload allocated", &mem)
    );
    println!("{mem_query} = {}", value(s));

    // Every dashboard query: success and at least one series. rate() needs two scrapes inside
    // its window, so retry until all answer (bounded).
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("deploy/grafana/apptheus.json"))
            .expect("read deploy/grafana/apptheus.json"),
    )
    .expect("apptheus.json is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "only {} queries found", queries.len());
    let end = Instant::now() + wait;
    let mut answers: Vec<Answer>;
    loop {
        answers = queries.iter().map(|q| prom.query(q)).collect();
        let settled = queries
            .iter()
            .zip(&answers)
            .all(|(_, a)| a.success_with_data());
        if settled || Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let all_answered = started.elapsed();
    println!("dashboard queries ({}):", queries.len());
    for (q, a) in queries.iter().zip(&answers) {
        let mark = if a.success_with_data() {
            "ok  "
        } else {
            "FAIL"
        };
        println!("{mark} {:>3} series  {q}", a.series.len());
        if let Some(e) = &a.error {
            println!("          {}: {e}", a.status);
        }
    }
    let failed: Vec<_> = queries
        .iter()
        .zip(&answers)
        .filter(|(_, a)| !a.success_with_data())
        .map(|(q, a)| format!("{q}\n    {a:?}"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} dashboard queries returned no data within {wait:?}:\n{}\n{}",
        failed.len(),
        queries.len(),
        failed.join("\n"),
        diagnostics()
    );
    println!(
        "real Prometheus test: daemon, containers and prometheus ready after {:.1} s, every check passed after {:.1} s",
        prom_ready.as_secs_f64(),
        all_answered.as_secs_f64(),
    );
}

/// The alert rules, their unit tests and the example configuration pass promtool.
#[test]
fn alert_rules_check_and_unit_tests() {
    let promtool = tool("promtool", "prometheus");
    let deploy = workspace().join("deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ] {
        // From deploy/prometheus: the test file and the config name alerts.yml relatively.
        let out = run(Command::new(&promtool).args(args).current_dir(&deploy));
        assert!(
            out.status.success(),
            "promtool {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `systemd-analyze verify` accepts the unit. verify fails when ExecStart's binary does not exist,
/// so (like deploy/check.sh) it checks a temporary copy whose ExecStart is this build's daemon.
#[test]
fn systemd_unit_verifies() {
    let analyze = tool("systemd-analyze", "systemd");
    let daemon = bin("apptheus");
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/apptheus.service"))
        .expect("read deploy/systemd/apptheus.service");
    let prefix = "ExecStart=/usr/bin/apptheus ";
    assert_eq!(
        unit.lines().filter(|l| l.starts_with(prefix)).count(),
        1,
        "the unit must have exactly one line starting with {prefix:?}"
    );
    let copy = unit
        .lines()
        .map(|l| match l.strip_prefix(prefix) {
            Some(rest) => format!("ExecStart={} {rest}", daemon.display()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let dir = tempfile::tempdir().expect("tempdir");
    // Same file name: verify derives the unit's name from it.
    let path = dir.path().join("apptheus.service");
    std::fs::write(&path, copy).expect("write unit copy");
    let out = run(Command::new(&analyze).arg("verify").arg(&path));
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// docs/metrics.md's metric table lists exactly the families a live daemon exposes (with containers
/// whose limits make the optional series appear), with the same types and label names.
#[test]
fn readme_metric_table_matches_the_daemon() {
    let readme =
        std::fs::read_to_string(workspace().join("docs/metrics.md")).expect("read docs/metrics.md");
    let rows = readme_table(&readme);
    let live = Live::start(0.2);
    // A third container that ended, with a non-zero status: the families only an ended
    // container has (its end time, its exit code) show too.
    let mut ended = live.daemon.exec_workload(&["ready", "wait", "exit:1"]);
    ended.ready();
    let admitted = format!("container=\"{}\"", exec_id(ended.pid()));
    eventually(Duration::from_secs(10), || {
        live.daemon.metrics().contains(&admitted).then_some(())
    })
    .unwrap_or_else(|| panic!("{admitted} not shown:\n{}", live.daemon.log_text()));
    ended.go();
    assert_eq!(ended.wait().code(), Some(1));
    let exit_code = format!(
        "apptheus_container_exit_code{{container=\"{}\"",
        exec_id(ended.pid())
    );
    let text = eventually(Duration::from_secs(10), || {
        let m = live.daemon.metrics();
        m.contains(&exit_code).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "the ended container's exit code is not shown:\n{}",
            live.daemon.log_text()
        )
    });
    let exposed = exposed_families(&text);

    let mut problems = Vec::new();
    let mut table = BTreeMap::new();
    for r in &rows {
        if table.insert(r.name.as_str(), r).is_some() {
            problems.push(format!("{} is listed twice", r.name));
        }
    }
    // The standard process_* metrics of the prometheus crate: the table may sum them up in one
    // `process_*` row, which must then match at least one exposed family.
    let is_process = |n: &str| n.starts_with("process_");
    if table.remove("process_*").is_some() && !exposed.keys().any(|n| is_process(n)) {
        problems.push("the table lists process_* but the daemon exposes none".into());
    }
    // Series the contract allows to be missing where the kernel has nothing to report. They are
    // excused only when the container's cgroup really lacks the file (or the line) they come
    // from.
    let memory_cgroup = memory_cgroup_dir(&text, &exec_id(live.limited.pid()));
    let pid = live.limited.pid();
    let unified = common::cgroup_dir_of(pid, "");
    let excused = |name: &str| -> Option<String> {
        if let Some(rest) = name.strip_prefix("apptheus_container_pressure_") {
            let resource = rest.split('_').next().unwrap_or_default();
            let Some(dir) = &unified else {
                return Some(format!("{name}: no unified tree, no PSI"));
            };
            let file = dir.join(format!("{resource}.pressure"));
            return match std::fs::read_to_string(&file) {
                Err(e) => Some(format!("{name}: {}: {e}", file.display())),
                Ok(t) if rest.contains("_stalled_") && !t.contains("full ") => Some(format!(
                    "{name}: {} has no \"full\" line (Linux before 5.13)",
                    file.display()
                )),
                Ok(_) => None,
            };
        }
        if name.starts_with("apptheus_container_cpu_cfs_") {
            let stat = common::cgroup_dir_of(pid, "cpu")
                .or_else(|| unified.clone())
                .map(|d| d.join("cpu.stat"))?;
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            return (!text.contains("nr_periods ")).then(|| {
                format!(
                    "{name}: {} has no nr_periods (no cpu controller)",
                    stat.display()
                )
            });
        }
        let files: &[&str] = match name {
            "apptheus_container_memory_swap_bytes" => {
                &["memory.memsw.usage_in_bytes", "memory.swap.current"]
            }
            "apptheus_container_memory_max_usage_bytes" => {
                &["memory.max_usage_in_bytes", "memory.peak"]
            }
            "apptheus_container_memory_events_total" => &["memory.failcnt", "memory.events"],
            _ => return None,
        };
        let dir = memory_cgroup.as_ref()?;
        files.iter().all(|f| !dir.join(f).exists()).then(|| {
            format!(
                "{name}: not exposed, {} has none of {files:?}",
                dir.display()
            )
        })
    };
    for (name, fam) in exposed.iter().filter(|(n, _)| !is_process(n)) {
        let Some(row) = table.get(name.as_str()) else {
            problems.push(format!(
                "{name} ({}) is exposed but not in the table",
                fam.kind
            ));
            continue;
        };
        if row.kind != fam.kind {
            problems.push(format!(
                "{name}: the table says {}, the daemon exposes {}",
                row.kind, fam.kind
            ));
        }
        if row.labels != fam.labels {
            problems.push(format!(
                "{name}: the table lists labels {:?}, the daemon's are {:?}",
                row.labels, fam.labels
            ));
        }
    }
    for name in table.keys().filter(|n| !exposed.contains_key(**n)) {
        match excused(name) {
            Some(why) => println!("excused: {why}"),
            None => problems.push(format!(
                "{name} is in the table but the daemon exposes no such family"
            )),
        }
    }
    println!(
        "docs/metrics.md table: {} rows; daemon: {} families ({} process_*)",
        rows.len(),
        exposed.len(),
        exposed.keys().filter(|n| is_process(n)).count()
    );
    assert!(
        problems.is_empty(),
        "docs/metrics.md's metric table and the daemon disagree:\n  {}\n--- /metrics:\n{text}",
        problems.join("\n  ")
    );
}

/// The directory of a container's cgroup in the memory hierarchy (v1 memory, else unified),
/// from the `cgroup` label of its info series (its path below that hierarchy's root).
fn memory_cgroup_dir(metrics: &str, id: &str) -> Option<PathBuf> {
    let line = metrics.lines().find(|l| {
        l.starts_with("apptheus_container_info{") && l.contains(&format!("container=\"{id}\""))
    })?;
    let path = line.split("cgroup=\"").nth(1)?.split('"').next()?;
    Some(cgroups::dir_of("memory", path))
}
