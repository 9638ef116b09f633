//! The scale curve: the same scenarios at each N of `--curve` (100, 1,000 and 10,000 live
//! containers by default), each with a fresh daemon, so that one N's leftovers cannot weigh on
//! the next. The launchers are light (xtask/bench/launcher.c: one C process and one sleeping
//! child each) so that 10,000 of them fit on a small machine; the daemon trusts them by path.
//!
//! Per N: admission of all N (launchers started back to back), RSS once sampled and scraped,
//! the sampling cost against the floors (sampling), one wrk run with and one without gzip,
//! connect → visible and kill → ended over a few containers started and ended one every 20 ms
//! while the N live (lifecycle), then all N ended at once, their series and cgroups removed,
//! the daemon stopped.
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{
    Admission, Ctx, Daemon, lifecycle,
    lifecycle::{Ended, Life},
    sampling::{self, Sampling},
    scrape::{self, Wrk},
    sys,
};

pub struct Point {
    pub n: usize,
    pub admission: Admission,
    pub rss_mib: f64,
    pub rss_after_wrk_mib: f64,
    pub sampling: Sampling,
    pub gzip: Wrk,
    pub plain: Wrk,
    pub gzip_bytes: usize,
    pub plain_bytes: usize,
    pub life: Life,
    pub bulk: Ended,
    pub leftover_cgroups: usize,
    /// The daemon's descriptors with N live (launcher connections, probes).
    pub fds: usize,
    /// Whether the network programs were attached (see `run`).
    pub network: bool,
}

/// Every N of the curve in turn; stops at the first that fails, keeping the points before it.
pub fn run(ctx: &Ctx) -> (Vec<Point>, Result<()>) {
    let mut points = Vec::new();
    // Two processes per container besides the host's: the default pid_max (32768) is too
    // small for 10,000 containers. Raised for the curve, restored after.
    let largest = ctx.cfg.curve.iter().copied().max().unwrap_or(0);
    let _pid_max = match raise_pid_max(largest) {
        Ok(guard) => guard,
        Err(e) => return (points, Err(e)),
    };
    // The network programs are attached once, whatever N: the curve runs with every
    // collector on. Each container holds its launcher's connection; its probe file takes what
    // the daemon's descriptor budget leaves.
    let network = true;
    for &n in &ctx.cfg.curve {
        match point(ctx, n, network) {
            Ok(p) => points.push(p),
            Err(e) => return (points, Err(e.context(format!("scale curve at N = {n}")))),
        }
    }
    (points, Ok(()))
}

fn raise_pid_max(containers: usize) -> Result<Option<sys::Sysctl>> {
    const PATH: &str = "/proc/sys/kernel/pid_max";
    let now: usize = std::fs::read_to_string(PATH)
        .context("reading pid_max")?
        .trim()
        .parse()
        .context("parsing pid_max")?;
    let want = 3 * containers + 32_768;
    if now >= want {
        return Ok(None);
    }
    Ok(Some(sys::Sysctl::set(PATH, &want.to_string())?))
}

fn point(ctx: &Ctx, n: usize, network: bool) -> Result<Point> {
    ctx.say(format!("scale curve: N = {n}"));
    let mut daemon = Daemon::start_for(ctx, n + ctx.cfg.curve_lifecycle, network)?;
    std::thread::sleep(Duration::from_millis(4 * ctx.cfg.interval_ms));
    let (mut cs, admission) = super::admit_with(ctx, &daemon, n, true)?;
    sys::get(&daemon.agent, &daemon.url("/metrics"), true)?;
    std::thread::sleep(Duration::from_millis(4 * ctx.cfg.interval_ms));
    let rss_mib = sys::rss_mib(daemon.pid())?;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .map(|rd| rd.count())
        .unwrap_or(0);
    ctx.say(format!(
        "  RSS at {n} containers {rss_mib:.1} MiB, {fds} descriptors"
    ));

    // The idle daemon's profile at the largest N: what a pass costs at scale.
    let largest = ctx.cfg.curve.iter().copied().max() == Some(n);
    let sampling = sampling::run(ctx, &daemon, ctx.cfg.curve_sampling_secs, largest)?;

    let url = daemon.url("/metrics");
    let gzip_bytes = sys::get(&daemon.agent, &url, true)?.1.len();
    let plain_bytes = sys::get(&daemon.agent, &url, false)?.1.len();
    let gzip = scrape::wrk(ctx, &url, true, daemon.pid())?;
    let plain = scrape::wrk(ctx, &url, false, daemon.pid())?;
    ctx.say(format!(
        "  scrapes: gzip {:.0}/s ({:.3} ms CPU each), plain {:.0}/s ({:.3} ms CPU each)",
        gzip.rps, gzip.cpu_ms_per_scrape, plain.rps, plain.cpu_ms_per_scrape
    ));
    let rss_after_wrk_mib = sys::rss_mib(daemon.pid())?;

    ctx.say(format!(
        "  lifecycle over {} containers next to the {n}",
        ctx.cfg.curve_lifecycle
    ));
    let life = lifecycle::run_with(ctx, &daemon, ctx.cfg.curve_lifecycle, true)?;
    ctx.say(format!("  ending the {n} containers at once"));
    let bulk = lifecycle::end_all(ctx, &daemon, &mut cs)?;
    drop(cs);
    lifecycle::wait_removed(ctx, &daemon)?;
    let leftover_cgroups = lifecycle::leftover_cgroups(ctx);
    let st = daemon.proc.stop(Duration::from_secs(30));
    if !st.is_some_and(|s| s.success()) {
        ctx.say(format!(
            "  the daemon did not stop cleanly ({st:?}); its log ends:\n{}",
            daemon.log_tail()
        ));
    }
    Ok(Point {
        n,
        admission,
        rss_mib,
        rss_after_wrk_mib,
        sampling,
        gzip,
        plain,
        gzip_bytes,
        plain_bytes,
        life,
        bulk,
        leftover_cgroups,
        fds,
        network,
    })
}
