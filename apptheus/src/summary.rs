//! A container's summary: one record when it ends, that outlives the series' retention.
//!
//! When the sampler takes a container's final values it hands them here: one `container
//! summary` log record (info), and with `--container.summary-file`, the same fields as one JSON
//! line appended to that file. A site keeps a per-job record without Prometheus, as jobstats
//! and seff give Slurm users. A number the kernel does not keep on this host, or a group that
//! is disabled, is absent from the record, never zero.
//!
//! - `Summary`: the record, computed from the container's final series (pure);
//! - `Allowance`: the CPUs the container may use, read once when it is first sampled;
//! - `Summaries`: writes the records (log and file).
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

pub use apptheus_api::summary::{CpusAllowed, CpusSource, PeakSource, Summary};

use crate::{
    cgroup::{ContainerCgroup, Reader},
    container::from_unix_seconds,
    metrics::ContainerSeries,
    safefile,
    tracker::ProcessCounters,
};

/// Mode of a summary file the daemon creates: root writes, a reader group (e.g. one a log
/// shipper runs in, after a `chgrp`) reads, others nothing: it names users and commands.
const FILE_MODE: u32 = 0o640;

/// What a summary file operation failed at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {}: {err}", path.display())]
    Open { path: PathBuf, err: io::Error },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot append to {}: {err}", path.display())]
    Write { path: PathBuf, err: io::Error },
}

/// The CPUs a container may use: its launcher's CPU affinity, which the kernel keeps within
/// the launcher's cpuset (Slurm's ConstrainCores, a systemd AllowedCPUs, taskset), and the CFS
/// quota along its cgroup path. Read once, when the container is first sampled: a job's CPUs
/// do not change while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Allowance {
    pub cpuset_cpus: Option<u32>,
    pub quota_cpus: Option<f64>,
}

impl Allowance {
    /// Reads it for a container whose launcher is `launcher` (`None` when the launcher is gone
    /// or no longer the container's: a recovered container's pid may name another process).
    pub fn read(reader: &mut Reader, cgroup: &ContainerCgroup, launcher: Option<i32>) -> Allowance {
        let cpuset_cpus = launcher.and_then(|pid| {
            let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(pid)).ok()?;
            let count = (0..nix::sched::CpuSet::count())
                .filter(|cpu| set.is_set(*cpu).unwrap_or(false))
                .count();
            u32::try_from(count).ok().filter(|n| *n > 0)
        });
        Allowance {
            cpuset_cpus,
            quota_cpus: reader.cpu_quota(cgroup),
        }
    }

    /// The number of CPUs the container could use at most, and where it comes from: the
    /// quota when it is below the cpuset, else the cpuset when it is below the host, else the
    /// host's online CPUs.
    pub fn cpus(self, host_cpus: u32) -> CpusAllowed {
        let host = f64::from(host_cpus.max(1));
        let (cpuset, cpuset_source) = match self.cpuset_cpus {
            Some(n) if n < host_cpus => (f64::from(n), CpusSource::Cpuset),
            _ => (host, CpusSource::Host),
        };
        let (cpus, source) = match self.quota_cpus {
            Some(quota) if quota > 0.0 && quota < cpuset => (quota, CpusSource::Quota),
            _ => (cpuset, cpuset_source),
        };
        CpusAllowed { cpus, source }
    }
}

/// How the container ended, as the eBPF tracker counts it; a field is absent where the
/// tracker's counters lack it (see `Fate::of`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fate {
    /// The exit status of the container's launcher as a shell reports it (128+N for a
    /// signal N).
    pub exit_code: Option<u32>,
    /// Processes the OOM killer ended.
    pub oom_kills: Option<u64>,
    /// Processes that ended with a non-zero code or a signal.
    pub failed_exits: Option<u64>,
    pub network_receive_bytes: Option<u64>,
    pub network_transmit_bytes: Option<u64>,
}

impl Fate {
    /// The fields the kernel counts; each is absent where this kernel cannot count it.
    fn of(counters: &ProcessCounters) -> Fate {
        Fate {
            exit_code: counters.exit_code,
            oom_kills: counters.oom_kills,
            failed_exits: counters.failed.map(|f| f.exit_code + f.signal),
            network_receive_bytes: counters.network.map(|n| n.receive_bytes),
            network_transmit_bytes: counters.network.map(|n| n.transmit_bytes),
        }
    }
}

/// `x` rounded to `digits` decimals (the record's readers want no float noise).
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// RFC 3339 with milliseconds, UTC; empty for a time no clock holds.
fn rfc3339(unix_seconds: f64) -> String {
    from_unix_seconds(unix_seconds)
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

/// An empty label value is an unknown one: absent.
fn known(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// The summary of a container from its final series (`end_time` set), what it was
/// allowed, and the host's online CPUs. `now` stands for the end of a series without one.
pub fn of(series: &ContainerSeries, host_cpus: u32, now: f64) -> Summary {
    let identity = &series.identity;
    let job = &identity.job;
    let stats = &series.stats;
    let fate = Fate::of(&series.procs);
    let start = identity.start_time;
    let end = series.end_time.unwrap_or(now);
    let duration = (end - start).max(0.0);
    // Read at the container's first pass; a container never sampled may use the host.
    let CpusAllowed {
        cpus: cpus_allowed,
        source: cpus_allowed_source,
    } = series
        .cpus_allowed
        .unwrap_or_else(|| Allowance::default().cpus(host_cpus));
    let cpu = stats.cpu.unwrap_or_default();
    let memory = stats.memory.unwrap_or_default();
    let cpu_efficiency = cpu
        .usage_seconds
        .filter(|_| duration > 0.0)
        .map(|cpu| round(cpu / (duration * cpus_allowed), 4));
    let pressure = |p: Option<crate::cgroup::Pressure>| {
        (
            p.map(|p| p.waiting_seconds),
            p.and_then(|p| p.stalled_seconds),
        )
    };
    let (cpu_waiting, cpu_stalled) = pressure(stats.pressure.cpu);
    let (memory_waiting, memory_stalled) = pressure(stats.pressure.memory);
    let (io_waiting, io_stalled) = pressure(stats.pressure.io);
    let throttling = stats.throttling;
    let memory_events = stats.memory_events.unwrap_or_default();
    Summary {
        container: identity.id.clone(),
        user: identity.user.clone(),
        uid: identity.uid.clone(),
        pid: identity.pid,
        exe: identity.exe.clone(),
        exe_path: identity.exe_path.clone(),
        cgroup: identity.cgroup_label.clone(),
        job_scheduler: job.scheduler_label().to_string(),
        job_id: known(&job.id),
        job_source: job.source.map(|s| s.as_str().to_string()),
        job_account: known(&job.account),
        job_partition: known(&job.partition),
        job_image: known(&job.image),
        start_time: rfc3339(start),
        end_time: rfc3339(end),
        start_time_seconds: start,
        end_time_seconds: end,
        duration_seconds: round(duration, 3),
        exit_code: fate.exit_code,
        cpu_seconds: cpu.usage_seconds,
        cpu_user_seconds: cpu.user_seconds,
        cpu_system_seconds: cpu.system_seconds,
        cpus_allowed,
        cpus_allowed_source,
        cpu_efficiency,
        memory_peak_bytes: memory.max_usage_bytes,
        memory_peak_source: memory.max_usage_bytes.map(|_| series.memory_peak_source),
        memory_limit_bytes: memory.limit_bytes,
        oom_kills: fate.oom_kills,
        failed_exits: fate.failed_exits,
        forks: series.procs.forks,
        execs: series.procs.execs,
        io_read_bytes: stats.io.map(|io| io.read_bytes),
        io_write_bytes: stats.io.map(|io| io.write_bytes),
        network_receive_bytes: fate.network_receive_bytes,
        network_transmit_bytes: fate.network_transmit_bytes,
        cpu_cfs_periods: throttling.map(|t| t.periods),
        cpu_cfs_throttled_periods: throttling.map(|t| t.throttled_periods),
        cpu_cfs_throttled_seconds: throttling.map(|t| t.throttled_seconds),
        pressure_cpu_waiting_seconds: cpu_waiting,
        pressure_cpu_stalled_seconds: cpu_stalled,
        pressure_memory_waiting_seconds: memory_waiting,
        pressure_memory_stalled_seconds: memory_stalled,
        pressure_io_waiting_seconds: io_waiting,
        pressure_io_stalled_seconds: io_stalled,
        memory_events_high: memory_events.high,
        memory_events_max: memory_events.max,
        memory_events_oom: memory_events.oom,
    }
}

/// A field of the record as the log record takes it: strings borrowed, an enum as its name,
/// numbers as they are (a `None` is left out of the event by tracing itself, as serde leaves it
/// out of the file's line).
trait LogValue {
    type Value<'a>: tracing::Value
    where
        Self: 'a;
    fn log_value(&self) -> Self::Value<'_>;
}

impl LogValue for String {
    type Value<'a> = &'a str;
    fn log_value(&self) -> &str {
        self
    }
}

impl LogValue for Option<String> {
    type Value<'a> = Option<&'a str>;
    fn log_value(&self) -> Option<&str> {
        self.as_deref()
    }
}

impl LogValue for CpusSource {
    type Value<'a> = &'static str;
    fn log_value(&self) -> &'static str {
        self.as_str()
    }
}

impl LogValue for Option<PeakSource> {
    type Value<'a> = Option<&'static str>;
    fn log_value(&self) -> Option<&'static str> {
        self.map(PeakSource::as_str)
    }
}

/// Numbers, and numbers that may be absent, go as they are.
macro_rules! log_as_is {
    ($($t:ty),*) => {$(
        impl LogValue for $t {
            type Value<'a> = $t;
            fn log_value(&self) -> $t {
                *self
            }
        }
        impl LogValue for Option<$t> {
            type Value<'a> = Option<$t>;
            fn log_value(&self) -> Option<$t> {
                *self
            }
        }
    )*};
}
log_as_is!(i32, u32, u64, f64);

/// One `tracing::info!` with each named field of the record, under its own name, in the
/// order given.
macro_rules! log_fields {
    ($summary:expr, $message:literal; $($field:ident),* $(,)?) => {
        tracing::info!($($field = LogValue::log_value(&$summary.$field),)* $message)
    };
}

/// The `container summary` log record: the same fields as the file's line, in the same
/// order (the test below compares the two).
fn log(summary: &Summary) {
    log_fields!(summary, "container summary";
        container, user, uid, pid, exe, exe_path, cgroup,
        job_scheduler, job_id, job_source, job_account, job_partition, job_image,
        start_time, end_time, start_time_seconds, end_time_seconds, duration_seconds,
        exit_code,
        cpu_seconds, cpu_user_seconds, cpu_system_seconds,
        cpus_allowed, cpus_allowed_source, cpu_efficiency,
        memory_peak_bytes, memory_peak_source, memory_limit_bytes,
        oom_kills, failed_exits, forks, execs,
        io_read_bytes, io_write_bytes, network_receive_bytes, network_transmit_bytes,
        cpu_cfs_periods, cpu_cfs_throttled_periods, cpu_cfs_throttled_seconds,
        pressure_cpu_waiting_seconds, pressure_cpu_stalled_seconds,
        pressure_memory_waiting_seconds, pressure_memory_stalled_seconds,
        pressure_io_waiting_seconds, pressure_io_stalled_seconds,
        memory_events_high, memory_events_max, memory_events_oom,
    );
}

/// Writes the summaries: the log record, and the file's line when there is a file.
pub struct Summaries {
    file: Option<SummaryFile>,
    host_cpus: u32,
}

impl Summaries {
    /// Records to the log only.
    pub fn log_only() -> Summaries {
        Summaries {
            file: None,
            host_cpus: host_cpus(),
        }
    }

    /// Records to the log and to `path` (opened now, so that a path the daemon cannot write
    /// stops it at start rather than losing every record).
    pub fn with_file(path: &Path) -> Result<Summaries, Error> {
        Ok(Summaries {
            file: Some(SummaryFile::open(path)?),
            host_cpus: host_cpus(),
        })
    }

    /// The summary of a container whose final values `series` holds. A record the file
    /// cannot take now (a full filesystem) is kept, in order, and written with the next ones
    /// (see `SummaryFile::write`). Returns the record: the sampler keeps it with the
    /// container's values while it is retained.
    pub fn ended(&mut self, series: &ContainerSeries) -> Summary {
        let now = crate::container::unix_seconds(std::time::SystemTime::now());
        let summary = of(series, self.host_cpus, now);
        log(&summary);
        let Some(file) = &mut self.file else {
            return summary;
        };
        match serde_json::to_vec(&summary) {
            Ok(mut line) => {
                line.push(b'\n');
                file.write(line);
            }
            Err(e) => tracing::error!(error = %e, "cannot serialize a container summary"),
        }
        summary
    }

    /// Write the records kept after a failure, if any (once a pass).
    pub fn retry(&mut self) {
        if let Some(file) = &mut self.file {
            file.flush();
        }
    }

    /// Failed writes of the summary file since the start.
    pub fn write_errors(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.errors)
    }
}

/// Records kept while the summary file cannot take them, at most: about a day of a busy
/// node's containers, a few MiB. Past it the oldest kept is dropped (counted and logged).
const MAX_PENDING: usize = 16_384;

/// The host's online CPUs (at least 1).
pub fn host_cpus() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// The summary file, opened for appending, and reopened when it was rotated away.
struct SummaryFile {
    path: PathBuf,
    file: File,
    /// (device, inode) of `file`: the path names another file, or none, once rotated.
    id: (u64, u64),
    /// Records not written yet, oldest first: the file failed (a full filesystem).
    pending: std::collections::VecDeque<Vec<u8>>,
    /// Failed writes, and records dropped past `MAX_PENDING`, since the start.
    errors: u64,
    dropped: u64,
    /// The last write failed: a run of failures is on (one warning for it).
    failing: bool,
}

impl SummaryFile {
    fn open(path: &Path) -> Result<SummaryFile, Error> {
        let (file, id) = open_append(path)?;
        Ok(SummaryFile {
            path: path.to_path_buf(),
            file,
            id,
            pending: Default::default(),
            errors: 0,
            dropped: 0,
            failing: false,
        })
    }

    /// Write `line` after the records kept before it; keep what the file does not take. The
    /// first failure of a run is a warning, the rest debug lines; the end of the run is said.
    fn write(&mut self, line: Vec<u8>) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
            tracing::warn!(
                dropped = self.dropped,
                "container summary records dropped: the summary file has failed for {MAX_PENDING} records"
            );
        }
        self.pending.push_back(line);
        self.flush();
    }

    /// Write the kept records, in order, until one fails.
    fn flush(&mut self) {
        while let Some(line) = self.pending.pop_front() {
            match self.append(&line) {
                Ok(()) => {}
                Err(e) => {
                    self.pending.push_front(line);
                    self.errors += 1;
                    if std::mem::replace(&mut self.failing, true) {
                        tracing::debug!(error = %e, kept = self.pending.len(), "cannot write the container summary file");
                    } else {
                        tracing::warn!(error = %e, kept = self.pending.len(), "cannot write the container summary file; its records are kept and written when it can take them");
                    }
                    return;
                }
            }
        }
        if std::mem::take(&mut self.failing) {
            tracing::info!(path = %self.path.display(), "container summary file written again");
        }
    }

    /// Appends `line` on an O_APPEND descriptor: at the end, whatever else appends to the
    /// file, and whole or not at all (what a failed write left of it is cut off again).
    /// Reopens first when the path no longer names the open file (logrotate's
    /// rename-and-create, or the file removed): one stat per record.
    fn append(&mut self, line: &[u8]) -> Result<(), Error> {
        let current = fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        if current != Some(self.id) {
            let (file, id) = open_append(&self.path)?;
            tracing::info!(
                path = %self.path.display(),
                "container summary file reopened (rotated or removed)"
            );
            self.file = file;
            self.id = id;
        }
        let write_error = |err| Error::Write {
            path: self.path.clone(),
            err,
        };
        let mut written = 0;
        while written < line.len() {
            match self.file.write(&line[written..]) {
                Ok(0) => return Err(write_error(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if written > 0
                        && let Ok(m) = self.file.metadata()
                    {
                        let _ = self.file.set_len(m.len().saturating_sub(written as u64));
                    }
                    return Err(write_error(e));
                }
            }
        }
        Ok(())
    }
}

/// Opens `path` for appending: a new file is created with exactly `FILE_MODE` (owned by the
/// daemon, root), an existing one is kept as the administrator made it. A symbolic link is
/// refused (O_NOFOLLOW: a root daemon must not append where a link points), so is anything
/// but a regular file; O_NONBLOCK keeps a FIFO put there from blocking the sampler.
/// Not `safefile::open`, which reads a file that exists: this one creates or appends, with
/// `safefile`'s flags.
fn open_append(path: &Path) -> Result<(File, (u64, u64)), Error> {
    let open_error = |err| Error::Open {
        path: path.to_path_buf(),
        err,
    };
    let flags = safefile::FLAGS;
    let mut attempt = 0;
    let file = loop {
        attempt += 1;
        let created = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(flags)
            .open(path);
        match created {
            Ok(file) => {
                // The umask may have narrowed the mode: set it as documented.
                file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
                    .map_err(open_error)?;
                break file;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(open_error(e)),
        }
        match OpenOptions::new()
            .read(true)
            .append(true)
            .custom_flags(flags)
            .open(path)
        {
            Ok(file) => break file,
            // Removed between the two opens: create it again, once.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 2 => continue,
            Err(e) => return Err(open_error(e)),
        }
    };
    let meta = file.metadata().map_err(open_error)?;
    if !meta.file_type().is_file() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
        });
    }
    // A line left torn (a crash in a write, a failed cut) ends here, so that the next record
    // starts a line of its own.
    let mut last = [0u8];
    if meta.len() > 0
        && std::os::unix::fs::FileExt::read_at(&file, &mut last, meta.len() - 1).is_ok()
        && last[0] != b'\n'
    {
        (&file).write_all(b"\n").map_err(open_error)?;
    }
    Ok((file, (meta.dev(), meta.ino())))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{
        cgroup::{Cpu, Io, Memory, MemoryEvents, Pressure, Pressures, Stats, Throttling},
        container::Identity,
        job::{Job, JobSource, Scheduler},
        telemetry::{Line, LogFormat},
    };

    fn series() -> ContainerSeries {
        ContainerSeries {
            identity: Arc::new(Identity {
                id: "starter_42".into(),
                cgroup: "/job_7/apptheus/starter_42".into(),
                cgroup_label: "/job_7/apptheus/starter_42".into(),
                user: "alice".into(),
                uid: "1000".into(),
                pid: 42,
                exe: "starter".into(),
                exe_path: "/usr/libexec/apptainer/bin/starter".into(),
                start_time: 1_700_000_000.0,
                job: Job {
                    scheduler: Some(Scheduler::Slurm),
                    id: "7".into(),
                    source: Some(JobSource::Cgroup),
                    account: "proj".into(),
                    ..Job::default()
                },
                owner: Some(1000),
            }),
            memory_source: "cgroup",
            memory_peak_source: PeakSource::Kernel,
            cpus_allowed: None,
            end_time: Some(1_700_000_010.0),
            stats: std::sync::Arc::new(Stats {
                cpu: Some(Cpu {
                    usage_seconds: Some(5.0),
                    user_seconds: Some(4.5),
                    system_seconds: Some(0.5),
                }),
                memory: Some(Memory {
                    max_usage_bytes: Some(1 << 30),
                    ..Memory::default()
                }),
                io: Some(Io {
                    read_bytes: 4096,
                    write_bytes: 0,
                }),
                pressure: Pressures {
                    cpu: Some(Pressure {
                        waiting_seconds: 1.5,
                        stalled_seconds: None,
                    }),
                    ..Pressures::default()
                },
                throttling: Some(Throttling {
                    periods: 100,
                    throttled_periods: 40,
                    throttled_seconds: 2.0,
                }),
                memory_events: Some(MemoryEvents {
                    max: Some(3),
                    ..MemoryEvents::default()
                }),
                ..Stats::default()
            }),
            procs: ProcessCounters {
                forks: 12,
                execs: 3,
                exits: 14,
                live: 0,
                ..ProcessCounters::default()
            },
            summary: None,
        }
    }

    #[test]
    fn cpus_allowed_is_the_smallest_of_cpuset_quota_and_host() {
        let a = |cpuset, quota| Allowance {
            cpuset_cpus: cpuset,
            quota_cpus: quota,
        };
        let ca = |cpus, source| CpusAllowed { cpus, source };
        assert_eq!(a(None, None).cpus(64), ca(64.0, CpusSource::Host));
        assert_eq!(a(Some(64), None).cpus(64), ca(64.0, CpusSource::Host));
        assert_eq!(a(Some(4), None).cpus(64), ca(4.0, CpusSource::Cpuset));
        assert_eq!(a(Some(4), Some(2.5)).cpus(64), ca(2.5, CpusSource::Quota));
        assert_eq!(a(Some(4), Some(8.0)).cpus(64), ca(4.0, CpusSource::Cpuset));
        assert_eq!(a(None, Some(0.5)).cpus(64), ca(0.5, CpusSource::Quota));
        assert_eq!(a(None, Some(128.0)).cpus(64), ca(64.0, CpusSource::Host));
        // Never a division by zero.
        assert_eq!(a(None, Some(0.0)).cpus(0), ca(1.0, CpusSource::Host));
    }

    #[test]
    fn summary_fields() {
        let mut series = series();
        series.cpus_allowed = Some(
            Allowance {
                cpuset_cpus: Some(4),
                quota_cpus: None,
            }
            .cpus(64),
        );
        let s = of(&series, 64, 0.0);
        assert_eq!(s.container, "starter_42");
        assert_eq!(s.job_scheduler, "slurm");
        assert_eq!(s.job_id.as_deref(), Some("7"));
        assert_eq!(s.job_partition, None);
        assert_eq!(s.start_time, "2023-11-14T22:13:20.000Z");
        assert_eq!(s.end_time, "2023-11-14T22:13:30.000Z");
        assert_eq!(s.duration_seconds, 10.0);
        assert_eq!(
            (s.cpus_allowed, s.cpus_allowed_source),
            (4.0, CpusSource::Cpuset)
        );
        // 5 s of CPU in 10 s on 4 CPUs.
        assert_eq!(s.cpu_efficiency, Some(0.125));
        assert_eq!(s.memory_peak_source, Some(PeakSource::Kernel));
        assert_eq!(s.memory_limit_bytes, None);
        assert_eq!((s.forks, s.execs), (12, 3));
        assert_eq!(s.cpu_cfs_throttled_periods, Some(40));
        assert_eq!(s.pressure_cpu_waiting_seconds, Some(1.5));
        assert_eq!(s.pressure_cpu_stalled_seconds, None);
        assert_eq!(s.memory_events_max, Some(3));
        // The tracker does not count these yet: absent, never zero.
        assert_eq!(s.exit_code, None);
        assert_eq!(s.oom_kills, None);
        assert_eq!(s.network_receive_bytes, None);

        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        for absent in [
            "exit_code",
            "oom_kills",
            "failed_exits",
            "network_receive_bytes",
            "job_partition",
            "memory_limit_bytes",
            "pressure_cpu_stalled_seconds",
            "pressure_io_waiting_seconds",
            "memory_events_high",
        ] {
            assert!(json.get(absent).is_none(), "{absent} in {keys:?}");
        }
        assert_eq!(json["cpu_efficiency"], 0.125);
        assert_eq!(json["forks"], 12);
    }

    /// The record carries the table's values under the keys the table names (see
    /// `metrics::families`), and leaves out what the table has no value for.
    #[test]
    fn the_record_holds_the_tables_values() {
        use crate::metrics::families::tests::{differences, every_value, no_value};
        for (what, mut series) in [("every value", every_value()), ("no value", no_value())] {
            // A summary is of an ended container; the table's end time is the series'.
            series.end_time.get_or_insert(1_700_000_100.0);
            let record = serde_json::to_value(of(&series, 8, 0.0)).unwrap();
            let wrong = differences(&record, &series, |f| f.summary, |f| f.summary);
            assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
        }
    }

    #[test]
    fn no_time_passed_no_efficiency() {
        let mut c = series();
        c.end_time = Some(c.identity.start_time);
        let s = of(&c, 2, 0.0);
        assert_eq!(s.duration_seconds, 0.0);
        assert_eq!(s.cpu_efficiency, None);
        // A sampled peak says so; no peak, no source.
        c.memory_peak_source = PeakSource::Sampled;
        assert_eq!(of(&c, 2, 0.0).memory_peak_source, Some(PeakSource::Sampled));
        std::sync::Arc::make_mut(&mut c.stats).memory = None;
        assert_eq!(of(&c, 2, 0.0).memory_peak_source, None);
    }

    /// The log record and the file's line are the same record: the JSON log line, less its
    /// ts, level and msg, is the file's line, key for key and in order; with every field
    /// present too, so that a field the log leaves out shows.
    #[test]
    fn the_log_record_and_the_file_line_agree() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut full = crate::metrics::families::tests::every_value();
        Arc::make_mut(&mut full.identity).job = Job {
            scheduler: Some(Scheduler::Slurm),
            id: "7".into(),
            source: Some(JobSource::Environment),
            account: "proj".into(),
            partition: "batch".into(),
            image: "/images/a.sif".into(),
        };
        for series in [series(), full] {
            let buf = Buf::default();
            let out = buf.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .event_format(Line {
                    format: LogFormat::Json,
                })
                .finish();
            let s = of(&series, 8, 0.0);
            tracing::subscriber::with_default(subscriber, || log(&s));
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            let log: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            assert_eq!(log["level"], "info");
            assert_eq!(log["msg"], "container summary");
            // Compared as text: same keys, same order, same numbers and strings.
            let (_, fields) = text
                .trim()
                .split_once("\"msg\":\"container summary\",")
                .unwrap();
            let file = String::from_utf8(serde_json::to_vec(&s).unwrap()).unwrap();
            assert_eq!(format!("{{{fields}"), file);
        }
    }

    #[test]
    fn the_file_is_created_0640_appended_and_reopened_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.jsonl");
        let mut file = SummaryFile::open(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, FILE_MODE);
        file.append(b"{\"a\":1}\n").unwrap();
        file.append(b"{\"a\":2}\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
        // logrotate: rename, then the daemon's next record goes to a new file at the path.
        let rotated = dir.path().join("summary.jsonl.1");
        fs::rename(&path, &rotated).unwrap();
        file.append(b"{\"a\":3}\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":3}\n");
        assert_eq!(
            fs::read_to_string(&rotated).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        // Removed: made again.
        fs::remove_file(&path).unwrap();
        file.append(b"{\"a\":4}\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":4}\n");
        // An existing file keeps its mode, and what it holds.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let mut again = SummaryFile::open(&path).unwrap();
        again.append(b"{\"a\":5}\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":4}\n{\"a\":5}\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o600
        );
    }

    #[test]
    fn links_and_non_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(SummaryFile::open(&link), Err(Error::Open { .. })));
        assert!(matches!(
            SummaryFile::open(dir.path()),
            Err(Error::Open { .. } | Error::NotAFile { .. })
        ));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No reader: the non-blocking open fails (ENXIO) rather than waiting for one.
        assert!(matches!(
            SummaryFile::open(&fifo),
            Err(Error::Open { .. } | Error::NotAFile { .. })
        ));
        assert!(matches!(
            SummaryFile::open(&dir.path().join("missing/summary.jsonl")),
            Err(Error::Open { .. })
        ));
    }
}
