//! The sampling pass: from the containers' cgroup files and kernel counters to the snapshot
//! that `/metrics` serves.
//!
//! Once per `--monitor.interval` the sampler reads every container that can have changed, ends
//! those whose counters show no live process, publishes the series if any value changed,
//! forgets containers whose retention is over, and saves the set of containers for a restart
//! when it changed. A container just admitted is read at once (to show it), and one that just
//! ended too (its final values; then its own directories go). The sampler owns what it reads
//! between passes: each container's last values, its highest memory, and the idle cache below.
use std::{
    collections::hash_map,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use foldhash::{HashMap, HashSet};

use anyhow::{Context as _, Result};
use apptheus_api::{PeakSource, Summary};
use tokio_util::sync::CancellationToken;

use crate::{
    cgroup::{Reader, Stats},
    collectors::Collectors,
    container::unix_seconds,
    history::{History, Reading},
    metrics::{ContainerSeries, Metrics, Output},
    registry::{Entry, Registry},
    state::StateDir,
    summary::{self, Allowance, CpusAllowed, Summaries},
    tracker::ProcessCounters,
};

/// How long an idle container's values may stand without reading its files: memory can still
/// move without its processes running (reclaim, swap-out), and limits can be changed. 30 s (10 s
/// before): at 1,000 idle containers the reads of these files every 10 s cost a third of a
/// pass's CPU (the bench's same-files floor against the probes alone), and 30 s is within one
/// scrape of most Prometheus servers.
const FULL_SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// An idle container whose re-reads find nothing moved is re-read less often: the interval
/// doubles per such re-read, up to `FULL_SAMPLE_EVERY` × 2^`IDLE_BACKOFF` (2 minutes), and is
/// back at 30 s as soon as a value moves or it runs. At scale most containers are long idle
/// (a job waiting on I/O or a held allocation): at 1,000 of them the 30 s re-reads were a third
/// of a pass's files.
const IDLE_BACKOFF: u32 = 2;

/// Which containers a pass reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Every one that can have changed, on the interval.
    Full,
    /// Those never read yet: just admitted.
    New,
    /// Those that ended and whose final values are not taken yet.
    Ended,
}

/// What the sampler keeps of one container between passes.
struct Sampled {
    entry: Entry,
    /// Its values, shared with the series published from them (a new one only on a change).
    /// Where the kernel keeps no peak, the highest usage read stands in `max_usage_bytes`.
    stats: Arc<Stats>,
    /// Whether the peak in `stats` is the kernel's.
    peak_source: PeakSource,
    /// The CPU probe's value at the last pass: unchanged means none of its processes ran.
    probe: Option<u64>,
    /// When all its files were last read.
    last_full: Option<Instant>,
    /// Re-reads in a row, while idle, that found nothing moved (up to `IDLE_BACKOFF`).
    unmoved: u32,
    procs: ProcessCounters,
    /// The highest memory usage read, for kernels that keep no peak (before 5.19 on v2).
    sampled_peak: Option<u64>,
    /// Sampled after its end: the values are final.
    finished: bool,
    /// The CPUs it may use, read at its first pass.
    allowance: Option<CpusAllowed>,
    /// Its summary record, once its final values were taken: published with its values for
    /// as long as it is retained (the query socket shows it).
    summary: Option<Arc<Summary>>,
}

impl Sampled {
    fn new(entry: Entry) -> Sampled {
        Sampled {
            entry,
            stats: Arc::default(),
            peak_source: PeakSource::Sampled,
            probe: None,
            last_full: None,
            unmoved: 0,
            procs: ProcessCounters::default(),
            sampled_peak: None,
            finished: false,
            allowance: None,
            summary: None,
        }
    }

    /// Whether `pass` reads this container.
    fn wanted(&self, pass: Pass) -> bool {
        !self.finished
            && match pass {
                Pass::Full => true,
                Pass::New => self.last_full.is_none(),
                Pass::Ended => self.entry.end_time.is_some(),
            }
    }

    /// Read what can have changed since the last pass. Returns whether a value changed.
    ///
    /// An idle container is read through its CPU probe only: when the probe reads the same CPU
    /// time, none of its processes has run (memory is charged, processes forked and I/O done by
    /// running tasks), so its other files are not read, unless the kernel counted a fork or an
    /// exit. Once its last read is `FULL_SAMPLE_EVERY` old (up to 4× that while its re-reads
    /// find nothing moved), what can move without it running (memory, limits, written-back
    /// I/O) is read again (`Reader::read_idle`).
    fn sample(
        &mut self,
        reader: &mut Reader,
        procs: Option<ProcessCounters>,
        now: Instant,
    ) -> bool {
        let cgroup = &self.entry.cgroup;
        let ended = self.entry.end_time.is_some();
        let probe = reader.probe(cgroup);
        let every = FULL_SAMPLE_EVERY * (1 << self.unmoved);
        let fresh = self
            .last_full
            .is_some_and(|t| now.duration_since(t) < every);
        let quiet = self.last_full.is_some()
            && !ended
            && procs == Some(self.procs)
            && probe.value.is_some()
            && probe.value == self.probe;
        let mut changed = false;
        if !(fresh && quiet) {
            let read = if quiet {
                // Idle, but its last read is old: only what moves without running is read again.
                let mut stats = Stats::clone(&self.stats);
                reader.read_idle(cgroup, &mut stats);
                stats
            } else {
                reader.read_all(cgroup, &probe)
            };
            // Memory is read afresh either way: whether it has a peak is the kernel's answer
            // (nothing read: as before).
            self.peak_source = match read.memory {
                Some(m) if m.max_usage_bytes.is_some() => PeakSource::Kernel,
                Some(_) => PeakSource::Sampled,
                None => self.peak_source,
            };
            let mut stats = if ended {
                // A batch system removes a job's cgroup (which may be the container's) as soon
                // as its last process exits: what was read last stands where nothing is left.
                read.or(&self.stats)
            } else {
                read
            };
            self.with_peak(&mut stats);
            self.last_full = Some(now);
            if stats != *self.stats {
                changed = true;
                self.stats = Arc::new(stats);
            }
            self.unmoved = match (quiet, changed) {
                (true, false) => (self.unmoved + 1).min(IDLE_BACKOFF),
                _ => 0,
            };
        }
        self.probe = probe.value;
        if let Some(p) = procs {
            changed |= p != self.procs;
            self.procs = p;
        }
        changed
    }

    /// Where the kernel keeps no peak, the highest usage read so far stands in for it (only a
    /// peak read makes the memory group: an absent group stays one `None`).
    fn with_peak(&mut self, stats: &mut Stats) {
        let usage = stats.memory.and_then(|m| m.usage_bytes);
        self.sampled_peak = self.sampled_peak.max(usage);
        if self.peak_source == PeakSource::Sampled
            && let Some(peak) = self.sampled_peak
        {
            stats.memory.get_or_insert_default().max_usage_bytes = Some(peak);
        }
    }

    fn series(&self) -> ContainerSeries {
        ContainerSeries {
            identity: self.entry.identity.clone(),
            memory_source: self.entry.cgroup.memory_source().as_str(),
            memory_peak_source: self.peak_source,
            cpus_allowed: self.allowance,
            stats: self.stats.clone(),
            end_time: self.entry.end_time.map(unix_seconds),
            procs: self.procs,
            summary: self.summary.clone(),
        }
    }
}

pub struct Sampler {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Where the containers are saved for a restart; none in tests of the sampler alone.
    state_dir: Option<StateDir>,
    reader: Reader,
    /// Where a container's summary goes when it is final.
    summaries: Summaries,
    /// The host's online CPUs, at start: what a container without a cpuset or quota may use.
    host_cpus: u32,
    containers: HashMap<u64, Sampled>,
    /// The registry's generation `containers` was last brought up to date with.
    generation: Option<u64>,
    /// The generation and time of the last `release_freed_memory`.
    trimmed: Option<(u64, Instant)>,
    /// The generation at the last full pass: unchanged since means a burst is over.
    last_full_generation: Option<u64>,
    /// The last minutes of each container, for the web page; none in tests of the sampler alone.
    history: Option<Arc<History>>,
    /// Failed saves of the state file since the start; whether the last one failed.
    state_errors: std::cell::Cell<u64>,
    state_failing: std::cell::Cell<bool>,
}

impl Sampler {
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        state_dir: Option<StateDir>,
    ) -> Sampler {
        Sampler {
            registry,
            metrics,
            state_dir,
            reader: Reader::new(),
            summaries: Summaries::log_only(),
            host_cpus: summary::host_cpus(),
            containers: HashMap::default(),
            generation: None,
            trimmed: None,
            last_full_generation: None,
            history: None,
            state_errors: Default::default(),
            state_failing: Default::default(),
        }
    }

    /// Keep `history` of every container it reads.
    pub fn with_history(mut self, history: Arc<History>) -> Sampler {
        self.history = Some(history);
        self
    }

    /// Reads no file of the disabled `collectors`' groups.
    pub fn with_collectors(mut self, collectors: Collectors) -> Sampler {
        self.reader = Reader::with_collectors(collectors);
        self
    }

    /// Writes the containers' summaries through `summaries` (the log only by default).
    pub fn with_summaries(mut self, summaries: Summaries) -> Sampler {
        self.summaries = summaries;
        self
    }

    /// Sample every `interval`, and at once when a container is admitted or ends, until
    /// `shutdown`; then save the containers for the next start.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) -> Result<()> {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let registry = self.registry.clone();
        loop {
            // Admissions (or ends) in a burst share one such pass.
            let pass = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => Pass::Full,
                _ = registry.admitted() => Pass::New,
                _ = registry.ended() => Pass::Ended,
            };
            // Reads of cgroup files: on a blocking thread.
            self = tokio::task::spawn_blocking(move || {
                self.pass(pass);
                self
            })
            .await
            .context("sampling pass")?;
        }
        tokio::task::spawn_blocking(move || {
            self.registry.shutdown();
            self.persist();
        })
        .await
        .context("saving the containers at shutdown")
    }

    /// One pass (blocking).
    fn pass(&mut self, pass: Pass) {
        let start = Instant::now();
        let unix = unix_seconds(SystemTime::now());
        let mut changed = self.sync();
        let (mut ended, mut finished) = (Vec::new(), Vec::new());
        let tracker = self.registry.tracker();
        let host_cpus = self.host_cpus;
        // Every container's counters in one batched map read (one lookup each if that fails).
        let counters = tracker.all_counters();
        for (key, s) in self.containers.iter_mut().filter(|(_, s)| s.wanted(pass)) {
            let procs = match &counters {
                Ok(all) => all.get(key).copied(),
                Err(_) => tracker.counters(*key).ok().flatten(),
            };
            changed |= s.sample(&mut self.reader, procs, start);
            if let Some(history) = &self.history {
                let reading = Reading {
                    at: start,
                    unix,
                    cpu_seconds: s.stats.cpu.and_then(|c| c.usage_seconds),
                    memory_bytes: s.stats.memory.and_then(|m| m.usage_bytes),
                };
                history.record(*key, &s.entry.identity, &reading);
            }
            if s.allowance.is_none() {
                // The launcher's pid names it only while the tracker holds it under this key
                // (after a restart, the pid may be another process's).
                let launcher = s.entry.identity.pid;
                let ours = tracker.key_of(launcher).ok().flatten() == Some(*key);
                let cgroup = &s.entry.cgroup;
                let allowance = Allowance::read(&mut self.reader, cgroup, ours.then_some(launcher));
                s.allowance = Some(allowance.cpus(host_cpus));
            }
            // Ended when the pass began: these values are the final ones. A container whose
            // counters show no live process has ended, even if its exit event was lost.
            if s.entry.end_time.is_some() {
                s.finished = true;
                finished.push(*key);
                let summary = self.summaries.ended(&s.series());
                s.summary = Some(Arc::new(summary));
                // Published with its final values even if none of them moved.
                changed = true;
            } else if procs.is_some_and(|p| p.live == 0) {
                ended.push(*key);
            }
        }
        if changed {
            self.publish();
        }
        for key in finished {
            self.registry.release(key);
        }
        for key in ended {
            self.registry.end(key);
        }
        // Counted from what this pass published, so the gauge and the series agree.
        let live = self
            .containers
            .values()
            .filter(|s| s.entry.end_time.is_none())
            .count();
        self.metrics.containers.set(live as i64);
        if pass != Pass::Full {
            // Saved at once: an admitted container may be the launcher's own cgroup, which
            // only the state file can tell a restarted daemon about.
            self.persist();
            return;
        }
        if let Ok(lost) = tracker.lost_events() {
            self.metrics.set_events_lost(lost);
        }
        self.registry.finish_walks();
        self.metrics
            .set_walks_cut_short(self.registry.walks_cut_short());
        self.metrics.set_descriptors(
            crate::descriptors::firm(),
            crate::descriptors::probes(),
            crate::descriptors::shared(),
        );
        tracker.warn_if_full();
        self.metrics
            .sample_duration
            .observe(start.elapsed().as_secs_f64());
        self.reap();
        self.persist();
        self.summaries.retry();
        self.metrics
            .set_write_errors(Output::SummaryFile, self.summaries.write_errors());
        self.release_freed_memory(start);
    }

    /// Give the allocator's free pages back to the system once the set of containers has
    /// changed: as soon as a whole interval passed without a change (a burst is over), and
    /// during a long burst at most every `TRIM_EVERY`. Admitting a burst of containers walks
    /// /proc over and over on up to 32 blocking threads (buffers the size of the host's process
    /// list), and glibc keeps what was freed: measured at 2,000 containers, 49.5 MiB resident before
    /// a trim and 38.7 MiB after. A trim costs a few milliseconds at most.
    fn release_freed_memory(&mut self, now: Instant) {
        const TRIM_EVERY: Duration = Duration::from_secs(10);
        let generation = self.generation.unwrap_or_default();
        let settled = self.last_full_generation == Some(generation);
        self.last_full_generation = Some(generation);
        match self.trimmed {
            Some((g, _)) if g == generation => return,
            Some((_, at)) if !settled && now.duration_since(at) < TRIM_EVERY => return,
            _ => {}
        }
        self.trimmed = Some((generation, now));
        crate::memory::release_freed();
    }

    /// Bring the containers up to date with the registry's. Returns whether they changed.
    fn sync(&mut self) -> bool {
        let generation = self.registry.generation();
        if self.generation == Some(generation) {
            return false;
        }
        self.generation = Some(generation);
        let entries = self.registry.entries();
        let keys: HashSet<u64> = entries.iter().map(|e| e.key).collect();
        self.containers.retain(|k, _| keys.contains(k));
        for entry in entries {
            match self.containers.entry(entry.key) {
                hash_map::Entry::Occupied(mut o) => o.get_mut().entry = entry,
                hash_map::Entry::Vacant(v) => {
                    v.insert(Sampled::new(entry));
                }
            }
        }
        if let Some(history) = &self.history {
            history.retain(|key| self.containers.contains_key(&key));
        }
        true
    }

    /// Hand every container's series to `/metrics`.
    fn publish(&self) {
        let mut series: Vec<ContainerSeries> =
            self.containers.values().map(Sampled::series).collect();
        series.sort_by(|a, b| a.identity.id.cmp(&b.identity.id));
        self.metrics.publish(series);
    }

    /// Let the registry forget the containers whose retention is over, once their final
    /// values were taken (the next pass's `sync` drops them here).
    fn reap(&mut self) {
        let containers = &self.containers;
        self.registry
            .reap(|key| containers.get(&key).is_some_and(|s| s.finished));
    }

    /// Write the state file if the set of containers changed since it was last written
    /// (blocking). A failure is logged and retried on the next pass.
    pub fn persist(&self) {
        let Some(dir) = &self.state_dir else { return };
        let Some(saved) = self.registry.unsaved() else {
            return;
        };
        let (failed, failing) = (&self.state_errors, &self.state_failing);
        match dir.save(&saved) {
            Ok(()) => {
                if failing.replace(false) {
                    tracing::info!("containers saved for a restart again");
                }
            }
            Err(e) => {
                failed.set(failed.get() + 1);
                if failing.replace(true) {
                    tracing::debug!(error = %format!("{e:#}"), "cannot save the containers for a restart");
                } else {
                    tracing::warn!(error = %format!("{e:#}"), "cannot save the containers for a restart; will retry every pass");
                }
                self.registry.unsaved_again();
            }
        }
        self.metrics
            .set_write_errors(Output::StateFile, failed.get());
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{cgroup::Layout, container::Identity};

    /// A container in a fake v1 tree (cpuacct and memory hierarchies in a temporary directory).
    fn fake_container(dir: &std::path::Path) -> Entry {
        let mut mountinfo = String::new();
        for (n, name) in ["cpuacct", "memory"].iter().enumerate() {
            let point = dir.join(name);
            fs::create_dir_all(point.join("job/c_1")).unwrap();
            mountinfo += &format!(
                "{n} 1 0:{n} / {} rw - cgroup cgroup rw,{name}\n",
                point.display()
            );
        }
        fs::write(dir.join("cpuacct/job/c_1/cpuacct.usage"), "1000\n").unwrap();
        fs::write(dir.join("memory/job/c_1/memory.usage_in_bytes"), "4096\n").unwrap();
        let layout = Layout::from_mountinfo(&mountinfo).unwrap();
        let cgroup = layout.open("/job/c_1", &[], &[]).unwrap();
        Entry {
            key: 1,
            identity: Arc::new(Identity {
                id: "c_1".into(),
                cgroup: "/job/c_1".into(),
                cgroup_label: "/job/c_1".into(),
                user: "root".into(),
                uid: "0".into(),
                pid: 1,
                exe: "c".into(),
                exe_path: "/bin/c".into(),
                start_time: 0.0,
                job: Default::default(),
                owner: None,
            }),
            cgroup: Arc::new(cgroup),
            end_time: None,
        }
    }

    #[test]
    fn an_idle_container_is_read_through_its_cpu_probe_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sampled::new(fake_container(dir.path()));
        let mut reader = Reader::new();
        let (t0, procs) = (Instant::now(), Some(ProcessCounters::default()));
        let usage = dir.path().join("memory/job/c_1/memory.usage_in_bytes");
        let cpu = dir.path().join("cpuacct/job/c_1/cpuacct.usage");
        assert!(s.sample(&mut reader, procs, t0), "the first read");
        assert_eq!(s.stats.memory.and_then(|m| m.usage_bytes), Some(4096));

        // Nothing ran: the CPU time is the same, so memory is not read again.
        fs::write(&usage, "8192\n").unwrap();
        assert!(!s.sample(&mut reader, procs, t0));
        assert_eq!(s.stats.memory.and_then(|m| m.usage_bytes), Some(4096));

        // A fork or an exit counted by the kernel: everything is read.
        let forked = Some(ProcessCounters {
            forks: 1,
            ..Default::default()
        });
        assert!(s.sample(&mut reader, forked, t0));
        assert_eq!(s.stats.memory.and_then(|m| m.usage_bytes), Some(8192));

        // Something ran.
        fs::write(&usage, "1\n").unwrap();
        fs::write(&cpu, "2000\n").unwrap();
        assert!(s.sample(&mut reader, forked, t0));
        assert_eq!(s.stats.memory.and_then(|m| m.usage_bytes), Some(1));

        // Idle, but the last full read is too old.
        fs::write(&usage, "2\n").unwrap();
        assert!(s.sample(&mut reader, forked, t0 + FULL_SAMPLE_EVERY));
        assert_eq!(s.stats.memory.and_then(|m| m.usage_bytes), Some(2));

        // No probe file: always a full read. (The open probe of a deleted regular file still
        // reads; on cgroupfs the read fails.)
        fs::remove_file(&cpu).unwrap();
        s.entry.cgroup.close_probe();
        fs::write(&usage, "3\n").unwrap();
        let t1 = t0 + FULL_SAMPLE_EVERY;
        assert!(s.sample(&mut reader, forked, t1));
        assert_eq!(s.stats.memory.and_then(|m| m.usage_bytes), Some(3));
    }

    #[test]
    fn the_values_are_shared_with_the_series_and_a_sampled_peak_kept_in_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sampled::new(fake_container(dir.path()));
        let mut reader = Reader::new();
        let (t0, procs) = (Instant::now(), Some(ProcessCounters::default()));
        let usage = dir.path().join("memory/job/c_1/memory.usage_in_bytes");
        let peak = |c: &ContainerSeries| c.stats.memory.and_then(|m| m.max_usage_bytes);
        assert!(s.sample(&mut reader, procs, t0));
        let first = s.series();
        // No max_usage_in_bytes in this tree: the highest usage read stands in.
        assert_eq!(first.memory_peak_source, PeakSource::Sampled);
        assert_eq!(peak(&first), Some(4096));
        assert!(
            Arc::ptr_eq(&first.stats, &s.stats),
            "one copy of the values"
        );

        // Read again, nothing changed: the same values, not a copy.
        let later = t0 + FULL_SAMPLE_EVERY;
        assert!(!s.sample(&mut reader, procs, later));
        assert!(Arc::ptr_eq(&first.stats, &s.series().stats));

        // Usage falls: the peak stays, the published series before keeps its values. (The
        // re-read before found nothing moved: the next is twice as far.)
        fs::write(&usage, "1\n").unwrap();
        let later = later + 2 * FULL_SAMPLE_EVERY;
        assert!(s.sample(&mut reader, procs, later));
        let after = s.series();
        assert_eq!(after.stats.memory.and_then(|m| m.usage_bytes), Some(1));
        assert_eq!(peak(&after), Some(4096));
        assert_eq!(first.stats.memory.and_then(|m| m.usage_bytes), Some(4096));

        // A kernel's own peak is the kernel's.
        fs::write(
            dir.path().join("memory/job/c_1/memory.max_usage_in_bytes"),
            "9000\n",
        )
        .unwrap();
        fs::write(&usage, "2\n").unwrap();
        assert!(s.sample(&mut reader, procs, later + FULL_SAMPLE_EVERY));
        assert_eq!(s.series().memory_peak_source, PeakSource::Kernel);
        assert_eq!(peak(&s.series()), Some(9000));
    }

    #[test]
    fn an_idle_container_whose_rereads_find_nothing_moved_is_reread_less_often() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sampled::new(fake_container(dir.path()));
        let mut reader = Reader::new();
        let (t0, procs) = (Instant::now(), Some(ProcessCounters::default()));
        let usage = dir.path().join("memory/job/c_1/memory.usage_in_bytes");
        let read = |s: &Sampled| s.stats.memory.and_then(|m| m.usage_bytes);
        let at = |k: u32| t0 + FULL_SAMPLE_EVERY * k;
        assert!(s.sample(&mut reader, procs, at(0)));
        let set = |v: u64| fs::write(&usage, format!("{v}\n")).unwrap();
        // Nothing moved at the 30 s re-read: the next is 60 s after it.
        assert!(!s.sample(&mut reader, procs, at(1)));
        set(7);
        assert!(!s.sample(&mut reader, procs, at(2)));
        assert_eq!(read(&s), Some(4096));
        assert!(s.sample(&mut reader, procs, at(3)));
        assert_eq!(read(&s), Some(7));
        // It moved: 30 s again, then 60, then 120.
        assert!(!s.sample(&mut reader, procs, at(4)));
        assert!(!s.sample(&mut reader, procs, at(6)));
        set(8);
        assert!(!s.sample(&mut reader, procs, at(9)));
        assert!(s.sample(&mut reader, procs, at(10)));
        assert_eq!(read(&s), Some(8));
        // Never further apart than 120 s.
        for k in [11, 13, 17] {
            assert!(!s.sample(&mut reader, procs, at(k)));
        }
        set(9);
        assert!(s.sample(&mut reader, procs, at(21)));
        assert_eq!(read(&s), Some(9));
    }
}
