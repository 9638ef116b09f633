//! Scrape at scale: `wrk -t2 -c4 --latency` on our /metrics and on Pushgateway 1.5.1's holding
//! the same container series, with and without `Accept-Encoding: gzip`, alternating between the
//! two servers so that both see the same machine. CPU per scrape is the server's utime+stime
//! over the wrk run divided by the requests it served.
//!
//! Pushgateway is loaded the way the Go Apptheus fed its embedded store: one group per container,
//! grouping key `job=<container id>`, series without labels of their own (the Go daemon wrote
//! `name value` lines); we keep our HELP/TYPE lines and the info series' extra labels, so the
//! groups hold exactly our container series.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx, Daemon,
    sys::{self, Proc, Spread},
};

#[derive(Clone, Copy, Debug, Default)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: f64,
    pub cpu_ms_per_scrape: f64,
}

/// Repeated wrk runs of one server and one encoding.
#[derive(Default)]
pub struct Case {
    pub runs: Vec<Wrk>,
    pub bytes: usize,
}

impl Case {
    pub fn spread(&self, f: impl Fn(&Wrk) -> f64) -> Spread {
        Spread::of(&self.runs.iter().map(f).collect::<Vec<_>>())
    }
}

pub struct Scrape {
    pub ours_gzip: Case,
    pub ours_plain: Case,
    pub pg_gzip: Case,
    pub pg_plain: Case,
    pub pg_version: String,
    pub groups: usize,
    pub series_per_group: f64,
    pub load_s: f64,
    pub container_text_bytes: usize,
}

pub fn run(ctx: &Ctx, d: &Daemon) -> Result<Scrape> {
    let ours_url = d.url("/metrics");
    let text = d.metrics()?;
    let groups = groups(&text);
    if groups.len() < ctx.cfg.containers {
        bail!(
            "our /metrics shows {} containers, expected {}",
            groups.len(),
            ctx.cfg.containers
        );
    }
    let series: usize = groups
        .values()
        .map(|g| g.lines().filter(|l| !l.starts_with('#')).count())
        .sum();
    let container_text_bytes = text
        .lines()
        .filter(|l| l.contains("apptheus_container_"))
        .map(|l| l.len() + 1)
        .sum();

    let pg_version = pushgateway_version()?;
    let port = sys::free_port()?;
    let pg_log = ctx.tmp.join("pushgateway.log");
    let mut cmd = Command::new("prometheus-pushgateway");
    cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // Debian's default persists to /var/lib/prometheus: keep this instance in memory only.
        .arg("--persistence.file=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&pg_log).context("creating Pushgateway's log")?);
    let mut pg = Proc::spawn("prometheus-pushgateway", &mut cmd)?;
    let agent = sys::agent();
    let base = format!("http://127.0.0.1:{port}");
    let ready = sys::eventually(Duration::from_secs(30), Duration::from_millis(50), || {
        if let Some(st) = pg.exited() {
            bail!(
                "Pushgateway exited at start ({st}): {}",
                std::fs::read_to_string(&pg_log).unwrap_or_default()
            );
        }
        Ok(sys::get(&agent, &format!("{base}/-/ready"), false)
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| ()))
    })?;
    if ready.is_none() {
        bail!("Pushgateway not ready after 30 s");
    }

    ctx.say(format!(
        "  pushing {} groups into Pushgateway {pg_version}",
        groups.len()
    ));
    let t = Instant::now();
    for (id, body) in &groups {
        let url = format!("{base}/metrics/job/{id}");
        let resp = agent
            .put(&url)
            .header("Content-Type", "text/plain; version=0.0.4")
            .send(body.as_bytes())
            .with_context(|| format!("PUT {url}"))?;
        if !resp.status().is_success() {
            bail!("PUT {url}: status {}", resp.status());
        }
    }
    let load_s = t.elapsed().as_secs_f64();
    let pg_url = format!("{base}/metrics");
    let pg_text = sys::get_text(&agent, &pg_url)?;
    let pushed = sys::samples(&pg_text, "push_time_seconds").len();
    if pushed != groups.len() {
        bail!(
            "Pushgateway holds {pushed} groups, {} were pushed",
            groups.len()
        );
    }
    ctx.say(format!("  loaded in {load_s:.2} s"));

    let mut s = Scrape {
        ours_gzip: Case::default(),
        ours_plain: Case::default(),
        pg_gzip: Case::default(),
        pg_plain: Case::default(),
        pg_version,
        groups: groups.len(),
        series_per_group: series as f64 / groups.len() as f64,
        load_s,
        container_text_bytes,
    };
    s.ours_gzip.bytes = sys::get(&agent, &ours_url, true)?.1.len();
    s.ours_plain.bytes = sys::get(&agent, &ours_url, false)?.1.len();
    s.pg_gzip.bytes = sys::get(&agent, &pg_url, true)?.1.len();
    s.pg_plain.bytes = pg_text.len();
    for rep in 0..ctx.cfg.wrk_reps {
        for gzip in [true, false] {
            let enc = if gzip { "gzip" } else { "plain" };
            let o = wrk(ctx, &ours_url, gzip, d.pid())?;
            ctx.say(format!(
                "  [{}] ours {enc}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {:.3} ms CPU/scrape",
                rep + 1,
                o.rps,
                o.p50_ms,
                o.p99_ms,
                o.cpu_ms_per_scrape
            ));
            let p = wrk(ctx, &pg_url, gzip, pg.pid())?;
            ctx.say(format!(
                "  [{}] Pushgateway {enc}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {:.3} ms CPU/scrape",
                rep + 1,
                p.rps,
                p.p50_ms,
                p.p99_ms,
                p.cpu_ms_per_scrape
            ));
            if gzip {
                s.ours_gzip.runs.push(o);
                s.pg_gzip.runs.push(p);
            } else {
                s.ours_plain.runs.push(o);
                s.pg_plain.runs.push(p);
            }
        }
    }
    pg.stop(Duration::from_secs(5));
    Ok(s)
}

fn pushgateway_version() -> Result<String> {
    let out = Command::new("prometheus-pushgateway")
        .arg("--version")
        .output()
        .context("running prometheus-pushgateway --version")?;
    // Go's kingpin prints the version on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no version in {text:?}"))
}

/// Our container series, one text body per container: HELP/TYPE lines, then its samples with the
/// `container` and `user` labels taken out (the grouping key carries the container).
fn groups(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut header = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            if line.contains(" apptheus_container_") {
                if line.starts_with("# HELP") {
                    header.clear();
                }
                header.push_str(line);
                header.push('\n');
            }
            continue;
        }
        if !line.starts_with("apptheus_container_") {
            continue;
        }
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(id) = sys::label(labels, "container") else {
            continue;
        };
        let others: Vec<&str> = labels
            .split(",")
            .filter(|l| !l.starts_with("container=") && !l.starts_with("user="))
            .collect();
        let body = out.entry(id.to_string()).or_default();
        // Once per family: a family may have several series per container (a `reason` label).
        if !body.contains(header.as_str()) {
            body.push_str(&header);
        }
        if others.is_empty() {
            let _ = writeln!(body, "{name} {value}");
        } else {
            let _ = writeln!(body, "{name}{{{}}} {value}", others.join(","));
        }
    }
    out
}

/// One wrk run; the server's CPU over it.
fn wrk(ctx: &Ctx, url: &str, gzip: bool, pid: i32) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        "-c4",
        &format!("-d{}s", ctx.cfg.wrk_secs),
        "--latency",
    ]);
    if gzip {
        cmd.args(["-H", "Accept-Encoding: gzip"]);
    }
    cmd.arg(url);
    let cpu0 = sys::cpu_seconds(pid)?;
    let out = crate::setup::output(&mut cmd)?;
    let cpu1 = sys::cpu_seconds(pid)?;
    let mut w = parse_wrk(&out).with_context(|| format!("unexpected wrk output:\n{out}"))?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk saw errors:\n{out}");
    }
    w.cpu_ms_per_scrape = (cpu1 - cpu0) * 1000.0 / w.requests;
    Ok(w)
}

fn parse_wrk(out: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    let mut in_dist = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            if let Some(v) = t.strip_prefix("50%") {
                w.p50_ms = duration_ms(v.trim())?;
            } else if let Some(v) = t.strip_prefix("99%") {
                w.p99_ms = duration_ms(v.trim())?;
                in_dist = false;
            }
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().ok()?;
        }
        if t.contains(" requests in ") {
            w.requests = t.split_whitespace().next()?.parse().ok()?;
        }
    }
    (w.requests > 0.0 && w.rps > 0.0).then_some(w)
}

/// wrk's durations: "812.00us", "1.23ms", "2.01s", "1.00m".
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let x: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => x / 1000.0,
        "ms" => x,
        "s" => x * 1000.0,
        "m" => x * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let out = "Running 10s test @ http://127.0.0.1:1/metrics
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  300.00us   9.00ms   90.00%
    Req/Sec     2.00k   100.00     2.20k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    1.50ms
     99%    2.50ms
  40000 requests in 10.00s, 1.00GB read
Requests/sec:   3999.50
Transfer/sec:    102.40MB
";
        let w = parse_wrk(out).unwrap();
        assert_eq!(w.requests, 40000.0);
        assert_eq!(w.rps, 3999.5);
        assert!((w.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(w.p99_ms, 2.5);
    }

    #[test]
    fn groups_strip_container_labels() {
        let text = "# HELP apptheus_container_info Info.
# TYPE apptheus_container_info gauge
apptheus_container_info{container=\"a_1\",user=\"root\",exe=\"a\",pid=\"1\"} 1
apptheus_container_info{container=\"a_2\",user=\"root\",exe=\"a\",pid=\"2\"} 1
# HELP apptheus_container_pids Tasks.
# TYPE apptheus_container_pids gauge
apptheus_container_pids{container=\"a_1\",user=\"root\"} 2
apptheus_container_pids{container=\"a_2\",user=\"root\"} 3
";
        let g = groups(text);
        assert_eq!(g.len(), 2);
        // Several series of one family in one container: one HELP/TYPE for them.
        let labelled = "# HELP apptheus_container_failed_exits_total Failed.
# TYPE apptheus_container_failed_exits_total counter
apptheus_container_failed_exits_total{container=\"a_1\",user=\"root\",reason=\"exit_code\"} 1
apptheus_container_failed_exits_total{container=\"a_1\",user=\"root\",reason=\"signal\"} 0
";
        assert_eq!(
            groups(labelled)["a_1"],
            "# HELP apptheus_container_failed_exits_total Failed.\n# TYPE apptheus_container_failed_exits_total counter\napptheus_container_failed_exits_total{reason=\"exit_code\"} 1\napptheus_container_failed_exits_total{reason=\"signal\"} 0\n"
        );
        assert_eq!(
            g["a_2"],
            "# HELP apptheus_container_info Info.\n# TYPE apptheus_container_info gauge\napptheus_container_info{exe=\"a\",pid=\"2\"} 1\n# HELP apptheus_container_pids Tasks.\n# TYPE apptheus_container_pids gauge\napptheus_container_pids 3\n"
        );
    }
}
