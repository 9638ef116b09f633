//! Lifecycle latency and what ending leaves behind.
//!
//! Visible: launchers are started one every 20 ms while a poller scrapes /metrics every 10 ms;
//! a container is visible at the first response that holds its series (an upper bound: the
//! poll period and the scrape's own time are included). Registration: its
//! `apptheus_container_start_time_seconds` minus its launcher's start.
//! Ended: the launcher and its child are killed by pid (one container every 20 ms); the latency
//! is `apptheus_container_end_time_seconds` (the wall-clock time the daemon marked it ended, on
//! the exit event) minus the time just before the first kill, so it includes the processes'
//! own exit: an upper bound again.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, bail};

use super::{
    Ctx, Daemon,
    sys::{self, Container},
};

pub struct Life {
    pub n: usize,
    pub visible_ms: Vec<f64>,
    pub registered_ms: Vec<f64>,
    pub ended_ms: Vec<f64>,
    pub poll_scrape_ms: f64,
}

/// Ending many containers at once.
pub struct Ended {
    pub n: usize,
    pub ended_ms: Vec<f64>,
    pub kill_s: f64,
    /// Container cgroup directories left after the retention passed.
    pub leftover_cgroups: usize,
}

#[derive(Default)]
struct Seen {
    visible: HashMap<String, SystemTime>,
    start: HashMap<String, f64>,
    end: HashMap<String, f64>,
    scrapes: u64,
    scrape_time: Duration,
}

/// Scrapes /metrics every `every` until stopped, recording what it sees first.
fn poller(
    d: &Daemon,
    every: Duration,
) -> (
    Arc<Mutex<Seen>>,
    Arc<AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (url, agent) = (d.url("/metrics"), d.agent.clone());
    let (s, st) = (seen.clone(), stop.clone());
    let h = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            let t = Instant::now();
            if let Ok(text) = sys::get_text(&agent, &url) {
                let now = SystemTime::now();
                let mut seen = s.lock().unwrap_or_else(|e| e.into_inner());
                seen.scrapes += 1;
                seen.scrape_time += t.elapsed();
                for (l, v) in sys::samples(&text, "apptheus_container_start_time_seconds") {
                    if let Some(id) = sys::label(l, "container") {
                        seen.visible.entry(id.to_string()).or_insert(now);
                        seen.start.entry(id.to_string()).or_insert(v);
                    }
                }
                for (l, v) in sys::samples(&text, "apptheus_container_end_time_seconds") {
                    if let Some(id) = sys::label(l, "container") {
                        seen.end.entry(id.to_string()).or_insert(v);
                    }
                }
            }
            std::thread::sleep(every);
        }
    });
    (seen, stop, h)
}

pub fn run(ctx: &Ctx, d: &Daemon) -> Result<Life> {
    run_with(ctx, d, ctx.cfg.lifecycle, false)
}

/// `n` containers started and then ended one every 20 ms, with apptheus-exec launchers or
/// `light` ones.
pub fn run_with(ctx: &Ctx, d: &Daemon, n: usize, light: bool) -> Result<Life> {
    let (seen, stop, handle) = poller(d, Duration::from_millis(10));
    let result = (|| {
        let mut cs: Vec<Container> = Vec::with_capacity(n);
        for _ in 0..n {
            cs.push(if light {
                d.launch_light(ctx)?
            } else {
                d.launch(ctx)?
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        let all_seen = sys::eventually(Duration::from_secs(60), Duration::from_millis(50), || {
            let s = seen.lock().unwrap_or_else(|e| e.into_inner());
            Ok(cs
                .iter()
                .all(|c| s.visible.contains_key(&c.id()))
                .then_some(()))
        })?;
        if all_seen.is_none() {
            bail!(
                "not all {n} containers became visible within 60 s:\n{}",
                d.log_tail()
            );
        }
        let mut killed = Vec::with_capacity(n);
        for c in cs.iter_mut() {
            killed.push((c.id(), c.end()));
            std::thread::sleep(Duration::from_millis(20));
        }
        let all_ended =
            sys::eventually(Duration::from_secs(30), Duration::from_millis(50), || {
                let s = seen.lock().unwrap_or_else(|e| e.into_inner());
                Ok(killed
                    .iter()
                    .all(|(id, _)| s.end.contains_key(id))
                    .then_some(()))
            })?;
        if all_ended.is_none() {
            bail!(
                "not all {n} containers were marked ended within 30 s:\n{}",
                d.log_tail()
            );
        }
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        let ms = |a: f64, b: f64| (a - b) * 1000.0;
        Ok(Life {
            n,
            visible_ms: cs
                .iter()
                .map(|c| {
                    s.visible[&c.id()]
                        .duration_since(c.spawned)
                        .unwrap_or_default()
                        .as_secs_f64()
                        * 1000.0
                })
                .collect(),
            registered_ms: cs
                .iter()
                .map(|c| ms(s.start[&c.id()], sys::unix(c.spawned)))
                .collect(),
            ended_ms: killed
                .iter()
                .map(|(id, t)| ms(s.end[id], sys::unix(*t)))
                .collect(),
            poll_scrape_ms: s.scrape_time.as_secs_f64() * 1000.0 / s.scrapes.max(1) as f64,
        })
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join();
    result
}

/// End every container at once; the latency of each from the daemon's end times.
pub fn end_all(ctx: &Ctx, d: &Daemon, cs: &mut [Container]) -> Result<Ended> {
    let n = cs.len();
    let (seen, stop, handle) = poller(d, Duration::from_millis(100));
    let t0 = Instant::now();
    let killed: Vec<(String, SystemTime)> = cs.iter_mut().map(|c| (c.id(), c.end())).collect();
    let kill_s = t0.elapsed().as_secs_f64();
    let all = sys::eventually(
        // Thousands of ends are marked within a few passes; the poll of a large /metrics is slow.
        Duration::from_secs(ctx.cfg.retention_s.max(10) + 30 + n as u64 / 50),
        Duration::from_millis(100),
        || {
            let s = seen.lock().unwrap_or_else(|e| e.into_inner());
            Ok(killed
                .iter()
                .all(|(id, _)| s.end.contains_key(id))
                .then_some(()))
        },
    );
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join();
    if all?.is_none() {
        let s = seen.lock().unwrap_or_else(|e| e.into_inner());
        let marked = killed
            .iter()
            .filter(|(id, _)| s.end.contains_key(id))
            .count();
        // A container whose series came and went between two polls (a poll slower than the
        // retention) is never seen ended.
        bail!(
            "not all {n} containers were marked ended: {marked} seen ended in {} polls of {:.0} ms each; the daemon's log ends:\n{}",
            s.scrapes,
            s.scrape_time.as_secs_f64() * 1000.0 / s.scrapes.max(1) as f64,
            d.log_tail()
        );
    }
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    let ended_ms = killed
        .iter()
        .map(|(id, t)| (s.end[id] - sys::unix(*t)) * 1000.0)
        .collect();
    Ok(Ended {
        n,
        ended_ms,
        kill_s,
        leftover_cgroups: 0,
    })
}

/// Wait until the ended containers' series are gone (retention passed) and two more passes ran;
/// returns the daemon's RSS then, in MiB.
pub fn wait_removed(ctx: &Ctx, d: &Daemon) -> Result<f64> {
    let gone = sys::eventually(
        // Removing 10,000 containers' directories in every hierarchy takes a while.
        Duration::from_secs(ctx.cfg.retention_s + 240),
        Duration::from_millis(250),
        || {
            let text = d.metrics()?;
            Ok(sys::samples(&text, "apptheus_container_info")
                .is_empty()
                .then_some(()))
        },
    )?;
    if gone.is_none() {
        bail!(
            "the ended containers' series were still exported {} s after the retention",
            60
        );
    }
    std::thread::sleep(Duration::from_millis(4 * ctx.cfg.interval_ms));
    let rss = sys::rss_mib(d.pid())?;
    ctx.say(format!("  all series removed; RSS {rss:.1} MiB"));
    Ok(rss)
}

/// Container cgroup directories still present below the bench's parent.
pub fn leftover_cgroups(ctx: &Ctx) -> usize {
    sys::cgroup_dirs(&ctx.parent)
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| {
            e.file_type().is_ok_and(|t| t.is_dir())
                && ["apptheus-exec_", "launcher_"]
                    .iter()
                    .any(|p| e.file_name().to_string_lossy().starts_with(p))
        })
        .count()
}
