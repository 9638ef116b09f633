//! `GET /api/containers` and the query socket's `containers`: every container, live and
//! retained, as JSON (docs/glance.md, "As JSON: `GET /api/containers`"). The daemon builds these; the page's
//! script, `apptheus-top` and `apptheus-report` read them.
use serde::{Deserialize, Serialize};

use crate::summary::Summary;

/// The answer of `GET /api/containers`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Containers {
    /// Unix seconds of the answer, by the daemon's clock (ages are taken against it).
    pub time: f64,
    /// The node's host name.
    pub host: String,
    /// The daemon's version.
    pub version: String,
    /// `--monitor.interval`, in seconds.
    pub interval_seconds: f64,
    /// Seconds between two points of a container's `history`.
    pub step_seconds: f64,
    /// Points a `history` holds at most.
    pub points: usize,
    /// Highest CPU now first (then by id).
    pub containers: Vec<Container>,
}

/// Whether a container still has processes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Live,
    /// Its last process exited; kept for `--container.retention`.
    Ended,
}

/// One container. A value the daemon could not read, or that does not apply, is `null`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Container {
    pub id: String,
    pub user: String,
    /// As the `uid` label: a number, or its keyed hash under `--privacy.hash-salt-file`.
    pub uid: String,
    /// `slurm`, `pbs`, `lsf`, `htcondor` or `flux`, where the container belongs to a batch job.
    pub scheduler: Option<String>,
    pub job_id: Option<String>,
    pub state: State,
    /// Unix seconds.
    pub start_time: f64,
    pub end_time: Option<f64>,
    /// CPU cores used over the last second or so; `null` once ended.
    pub cpu_cores: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    /// The smallest limit along its cgroup path; `null` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Live processes (the eBPF tracker's count).
    pub processes: u64,
    /// Once the container ended: its launcher's exit status, or 128+N for signal N (`null`
    /// where the kernel's BTF has no `task_struct.exit_code`, or after a restart).
    pub exit_code: Option<u32>,
    /// The last minutes; left out when asked for with `?history=0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Trend>,
    /// Once ended, its summary record; only on the query socket (HTTP leaves it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Box<Summary>>,
}

/// A container's points, oldest first, one per `step_seconds`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Trend {
    /// Unix seconds at which the newest point closed; `null` before the first one. Point `i`
    /// of `n` closed at `last - (n - 1 - i) * step_seconds`.
    pub last: Option<f64>,
    /// Average CPU cores over each step.
    pub cpu_cores: Vec<Option<f32>>,
    /// Memory in use at the end of each step.
    pub memory_bytes: Vec<Option<u64>>,
}

/// The query socket's answer to `container <ID>`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct One {
    pub container: Container,
}
