//! A container's summary record: the `container summary` log line, a line of
//! `--container.summary-file`, the `summary` of an ended container on the query socket. The
//! daemon computes it (its `summary` module); reports read it back.
use serde::{Deserialize, Serialize};

/// Where `cpus_allowed` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpusSource {
    /// The launcher's CPU affinity (the job's cpuset), below the host's CPUs.
    Cpuset,
    /// The CFS quota along its cgroup path, below its cpuset.
    Quota,
    /// Neither: every online CPU of the host.
    Host,
}

impl CpusSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CpusSource::Cpuset => "cpuset",
            CpusSource::Quota => "quota",
            CpusSource::Host => "host",
        }
    }
}

/// The CPUs a container may use at most, and where that number comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpusAllowed {
    pub cpus: f64,
    pub source: CpusSource,
}

/// Where a memory peak comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeakSource {
    /// The cgroup's own peak (`memory.max_usage_in_bytes`, `memory.peak`).
    Kernel,
    /// The highest usage the sampler read: a spike between two passes is missed.
    Sampled,
}

impl PeakSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PeakSource::Kernel => "kernel",
            PeakSource::Sampled => "sampled",
        }
    }
}

impl std::fmt::Display for PeakSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container's summary. Field names are the record's keys, in this order, in the log and
/// in the file; `None` fields are left out of both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub container: String,
    pub user: String,
    /// The launcher's real uid (hashed under `--privacy.hash-salt-file`, as the labels are).
    pub uid: String,
    /// The launcher's pid.
    pub pid: i32,
    pub exe: String,
    pub exe_path: String,
    pub cgroup: String,
    /// `slurm`, `pbs`, `lsf`, `htcondor`, `flux`, or `none`.
    pub job_scheduler: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_partition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_image: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    pub start_time: String,
    pub end_time: String,
    /// Unix seconds, the values of the start and end time series.
    pub start_time_seconds: f64,
    pub end_time_seconds: f64,
    pub duration_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_user_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_system_seconds: Option<f64>,
    /// The CPUs it could use at most (see `Allowance`), and whence: `cpuset`, `quota`, `host`.
    pub cpus_allowed: f64,
    pub cpus_allowed_source: CpusSource,
    /// CPU time over wall time times `cpus_allowed`: 1 used every CPU it was allowed all along.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_efficiency: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// `kernel` (the cgroup's own peak) or `sampled` (the highest usage the sampler read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_peak_source: Option<PeakSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_exits: Option<u64>,
    pub forks: u64,
    pub execs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_read_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_write_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_receive_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_transmit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cfs_periods: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cfs_throttled_periods: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cfs_throttled_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure_cpu_waiting_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure_cpu_stalled_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure_memory_waiting_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure_memory_stalled_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure_io_waiting_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure_io_stalled_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_events_high: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_events_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_events_oom: Option<u64>,
}
