//! The per-container metrics, each defined once: its name, type, help, unit, collector group,
//! how to get its value from a container's series, and the keys under which the summary record
//! and `/api/containers` carry the same value. `/metrics` is rendered from this table; tests
//! (here, in `summary` and in `http::api`) hold the summary record, `/api/containers` and
//! docs/metrics.md (its metric table's per-container rows, its Collectors section) to it and
//! fail naming each difference.
//!
//! Adding a per-container metric: an entry here, and the code that reads its value (a `Stats`
//! group of `cgroup`, the tracker's counters, the sampler). Its row in docs/metrics.md is made
//! from the entry: `APPTHEUS_WRITE_DOCS=1 cargo test -p apptheus --lib the_docs_table` writes
//! it; the Collectors section's counts are edited by hand, as its test says.
use super::ContainerSeries;
use crate::collectors::Collector;

pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    /// As the text format's `# TYPE` line (and docs/metrics.md) names it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// What a family's value counts. Prometheus names a family by its base unit: the tests hold
/// the names to it (`_seconds`, `_bytes`, and neither for the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A duration, or a Unix time.
    Seconds,
    Bytes,
    /// CPUs, a fraction under a quota.
    Cpus,
    /// A number of things (tasks, processes, calls, packets, periods, events): the name says
    /// which.
    Count,
    /// An exit status as a shell reports it.
    Status,
}

/// Where a family's value also appears in a JSON record (the summary record, or a container of
/// `/api/containers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Not there.
    No,
    /// Under this key, absent (or null) where the family has no value.
    Is(&'static str),
    /// Under this key, which holds a fallback where the family has no value (a record's end
    /// time is the time it was made; its CPUs, the host's when none were read).
    OrElse(&'static str),
}

/// Where a labeled family's values also appear in a JSON record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabeledKey {
    /// Not there.
    No,
    /// One key per label value: this prefix followed by the value, absent where the family
    /// has no sample with it.
    EachUnder(&'static str),
    /// Under this key, the sum of its samples; absent where it has none.
    Sum(&'static str),
}

/// A per-container family: name, type, help, unit, where its value also appears, and how to
/// get its value.
// `doc`, `unit`, `summary` and `api` are read by the tests that hold the records and the docs
// to this table; rendering needs none of them.
#[cfg_attr(not(test), expect(dead_code))]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Its row's meaning in docs/metrics.md (Markdown; longer than the help).
    pub doc: &'static str,
    pub unit: Unit,
    pub summary: Key,
    pub api: Key,
    pub value: fn(&ContainerSeries) -> Option<Value>,
}

/// A per-container family with one more label: one sample per value of `label` that the
/// container has, each handed to the callback `values` is given.
#[cfg_attr(not(test), expect(dead_code))]
pub struct LabeledFamily {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Its row's meaning in docs/metrics.md (Markdown; longer than the help).
    pub doc: &'static str,
    pub unit: Unit,
    pub summary: LabeledKey,
    pub api: LabeledKey,
    pub label: &'static str,
    pub values: fn(&ContainerSeries, &mut dyn FnMut(&'static str, Value)),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

/// The families of one collector group (`None`: always on), in output order.
pub struct Group {
    pub collector: Option<Collector>,
    pub families: &'static [Family],
    pub labeled: &'static [LabeledFamily],
}

pub const GROUPS: &[Group] = &[
    Group {
        collector: None,
        families: CORE,
        labeled: &[],
    },
    Group {
        collector: Some(Collector::Io),
        families: IO,
        labeled: &[],
    },
    Group {
        collector: Some(Collector::Processes),
        families: PROCESSES,
        labeled: &[],
    },
    Group {
        collector: Some(Collector::Pressure),
        families: PRESSURE,
        labeled: &[],
    },
    Group {
        collector: Some(Collector::Throttling),
        families: THROTTLING,
        labeled: &[],
    },
    Group {
        collector: Some(Collector::MemoryEvents),
        families: &[],
        labeled: MEMORY_EVENTS,
    },
    Group {
        collector: None,
        families: FATE,
        labeled: FAILED_EXITS,
    },
    Group {
        collector: Some(Collector::Network),
        families: NETWORK,
        labeled: &[],
    },
];

const CORE: &[Family] = &[
    Family {
        name: "apptheus_container_start_time_seconds",
        kind: Kind::Gauge,
        help: "Unix time the container was registered.",
        doc: "unix time the container was registered",
        unit: Unit::Seconds,
        summary: Key::Is("start_time_seconds"),
        api: Key::Is("start_time"),
        value: |c| Some(Value::Float(c.identity.start_time)),
    },
    Family {
        name: "apptheus_container_end_time_seconds",
        kind: Kind::Gauge,
        help: "Unix time the container's last process exited (only for ended containers).",
        doc: "unix time the container's last process exited; present only for ended containers, during `--container.retention`",
        unit: Unit::Seconds,
        summary: Key::OrElse("end_time_seconds"),
        api: Key::Is("end_time"),
        value: |c| c.end_time.map(Value::Float),
    },
    Family {
        name: "apptheus_container_cpu_usage_seconds_total",
        kind: Kind::Counter,
        help: "CPU time consumed by the container's cgroup.",
        doc: "CPU time of the container's cgroup",
        unit: Unit::Seconds,
        summary: Key::Is("cpu_seconds"),
        api: Key::Is("cpu_seconds"),
        value: |c| c.stats.cpu.and_then(|c| c.usage_seconds).map(Value::Float),
    },
    Family {
        name: "apptheus_container_cpu_user_seconds_total",
        kind: Kind::Counter,
        help: "User CPU time consumed by the container's cgroup.",
        doc: "user CPU time",
        unit: Unit::Seconds,
        summary: Key::Is("cpu_user_seconds"),
        api: Key::No,
        value: |c| c.stats.cpu.and_then(|c| c.user_seconds).map(Value::Float),
    },
    Family {
        name: "apptheus_container_cpu_system_seconds_total",
        kind: Kind::Counter,
        help: "System CPU time consumed by the container's cgroup.",
        doc: "system CPU time",
        unit: Unit::Seconds,
        summary: Key::Is("cpu_system_seconds"),
        api: Key::No,
        value: |c| c.stats.cpu.and_then(|c| c.system_seconds).map(Value::Float),
    },
    Family {
        name: "apptheus_container_memory_usage_bytes",
        kind: Kind::Gauge,
        help: "Current memory usage.",
        doc: "current memory usage",
        unit: Unit::Bytes,
        summary: Key::No,
        api: Key::Is("memory_bytes"),
        value: |c| c.stats.memory.and_then(|m| m.usage_bytes).map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_working_set_bytes",
        kind: Kind::Gauge,
        help: "Memory usage minus inactive file cache.",
        doc: "usage minus inactive file cache",
        unit: Unit::Bytes,
        summary: Key::No,
        api: Key::No,
        value: |c| {
            c.stats
                .memory
                .and_then(|m| m.working_set_bytes)
                .map(Value::Int)
        },
    },
    Family {
        name: "apptheus_container_memory_rss_bytes",
        kind: Kind::Gauge,
        help: "Anonymous memory.",
        doc: "anonymous memory",
        unit: Unit::Bytes,
        summary: Key::No,
        api: Key::No,
        value: |c| c.stats.memory.and_then(|m| m.rss_bytes).map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_cache_bytes",
        kind: Kind::Gauge,
        help: "Page cache memory.",
        doc: "page cache",
        unit: Unit::Bytes,
        summary: Key::No,
        api: Key::No,
        value: |c| c.stats.memory.and_then(|m| m.cache_bytes).map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_swap_bytes",
        kind: Kind::Gauge,
        help: "Swap in use.",
        doc: "swap in use (omitted when the host accounts no swap)",
        unit: Unit::Bytes,
        summary: Key::No,
        api: Key::No,
        value: |c| c.stats.memory.and_then(|m| m.swap_bytes).map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_max_usage_bytes",
        kind: Kind::Gauge,
        help: "Peak memory usage.",
        doc: "peak usage: the kernel's where it keeps one, else the highest usage read (see `memory_peak_source`)",
        unit: Unit::Bytes,
        summary: Key::Is("memory_peak_bytes"),
        api: Key::Is("memory_peak_bytes"),
        value: |c| {
            c.stats
                .memory
                .and_then(|m| m.max_usage_bytes)
                .map(Value::Int)
        },
    },
    Family {
        name: "apptheus_container_spec_memory_limit_bytes",
        kind: Kind::Gauge,
        help: "Memory limit of the container (the smallest along its cgroup path).",
        doc: "memory limit, the smallest along the cgroup path (omitted when unlimited)",
        unit: Unit::Bytes,
        summary: Key::Is("memory_limit_bytes"),
        api: Key::Is("memory_limit_bytes"),
        value: |c| c.stats.memory.and_then(|m| m.limit_bytes).map(Value::Int),
    },
    Family {
        name: "apptheus_container_spec_cpus",
        kind: Kind::Gauge,
        help: "CPUs the container may use: the smallest of its cpuset, its CFS quota and the host's CPUs (which, in cpus_source of apptheus_container_info).",
        doc: "CPUs the container may use: the smallest of its launcher's CPU affinity (the job's cpuset), the CFS quota along its cgroup path, and the host's online CPUs; read at its first pass; with `apptheus_container_cpu_usage_seconds_total`, a central store computes efficiency without asking the scheduler",
        unit: Unit::Cpus,
        summary: Key::OrElse("cpus_allowed"),
        api: Key::No,
        value: |c| c.cpus_allowed.map(|a| Value::Float(a.cpus)),
    },
    Family {
        name: "apptheus_container_pids",
        kind: Kind::Gauge,
        help: "Tasks in the container's cgroup.",
        doc: "tasks in the cgroup",
        unit: Unit::Count,
        summary: Key::No,
        api: Key::No,
        value: |c| c.stats.pids.and_then(|p| p.current).map(Value::Int),
    },
    Family {
        name: "apptheus_container_spec_pids_limit",
        kind: Kind::Gauge,
        help: "Pids limit of the container (the smallest along its cgroup path).",
        doc: "pids limit, the smallest along the cgroup path (omitted when unlimited)",
        unit: Unit::Count,
        summary: Key::No,
        api: Key::No,
        value: |c| c.stats.pids.and_then(|p| p.limit).map(Value::Int),
    },
];

const IO: &[Family] = &[
    Family {
        name: "apptheus_container_blkio_read_bytes_total",
        kind: Kind::Counter,
        help: "Bytes read from block devices.",
        doc: "bytes read from block devices",
        unit: Unit::Bytes,
        summary: Key::Is("io_read_bytes"),
        api: Key::No,
        value: |c| c.stats.io.map(|io| Value::Int(io.read_bytes)),
    },
    Family {
        name: "apptheus_container_blkio_write_bytes_total",
        kind: Kind::Counter,
        help: "Bytes written to block devices.",
        doc: "bytes written to block devices",
        unit: Unit::Bytes,
        summary: Key::Is("io_write_bytes"),
        api: Key::No,
        value: |c| c.stats.io.map(|io| Value::Int(io.write_bytes)),
    },
];

const PROCESSES: &[Family] = &[
    Family {
        name: "apptheus_container_processes",
        kind: Kind::Gauge,
        help: "Live processes of the container, tracked by the eBPF hooks.",
        doc: "live processes tracked by the eBPF hooks",
        unit: Unit::Count,
        summary: Key::No,
        api: Key::Is("processes"),
        value: |c| Some(Value::Int(c.procs.live)),
    },
    Family {
        name: "apptheus_container_forks_total",
        kind: Kind::Counter,
        help: "Processes forked inside the container (eBPF).",
        doc: "processes forked inside the container (eBPF)",
        unit: Unit::Count,
        summary: Key::Is("forks"),
        api: Key::No,
        value: |c| Some(Value::Int(c.procs.forks)),
    },
    Family {
        name: "apptheus_container_execs_total",
        kind: Kind::Counter,
        help: "execve calls inside the container (eBPF).",
        doc: "execve calls inside the container (eBPF)",
        unit: Unit::Count,
        summary: Key::Is("execs"),
        api: Key::No,
        value: |c| Some(Value::Int(c.procs.execs)),
    },
    Family {
        name: "apptheus_container_exits_total",
        kind: Kind::Counter,
        help: "Processes of the container that exited (eBPF).",
        doc: "processes of the container that exited (eBPF)",
        unit: Unit::Count,
        summary: Key::No,
        api: Key::No,
        value: |c| Some(Value::Int(c.procs.exits)),
    },
    Family {
        name: "apptheus_container_untracked_processes_total",
        kind: Kind::Counter,
        help: "New processes the eBPF hooks did not track: the container was at its process bound (they stay in its cgroup).",
        doc: "new processes the eBPF hooks did not track because the container was at its process bound (or the tracked-process map was full); they stay in the container's cgroup, so their CPU, memory and I/O are still measured, but they count in no process counter",
        unit: Unit::Count,
        summary: Key::No,
        api: Key::No,
        value: |c| Some(Value::Int(c.procs.untracked)),
    },
];

/// How the container ended: read from the kernel's counters, which a container's end needs
/// anyway (not a group that can be turned off).
const FATE: &[Family] = &[
    Family {
        name: "apptheus_container_exit_code",
        kind: Kind::Gauge,
        help: "Exit status of the container's launcher as a shell reports it (128+N for signal N), once the container ended.",
        doc: "once the container ended: its launcher's exit status as a shell reports it, the code or 128+N for signal N (for `apptheus-exec` and Apptainer's starter, the job's own status); omitted where the kernel's BTF has no `task_struct.exit_code`, and for a container taken back after a restart",
        unit: Unit::Status,
        summary: Key::Is("exit_code"),
        api: Key::Is("exit_code"),
        value: |c| {
            c.end_time?;
            c.procs.exit_code.map(|v| Value::Int(v.into()))
        },
    },
    Family {
        name: "apptheus_container_oom_kills_total",
        kind: Kind::Counter,
        help: "Processes of the container killed by the OOM killer, whichever limit was hit.",
        doc: "processes of the container killed by the OOM killer, whichever limit it enforced (the container's, the job's above it, the host's); omitted where the kernel has no `oom/mark_victim` tracepoint",
        unit: Unit::Count,
        summary: Key::Is("oom_kills"),
        api: Key::No,
        value: |c| c.procs.oom_kills.map(Value::Int),
    },
];

const FAILED_EXITS: &[LabeledFamily] = &[LabeledFamily {
    name: "apptheus_container_failed_exits_total",
    kind: Kind::Counter,
    help: "Processes of the container that exited with a non-zero code (reason=\"exit_code\") or were killed by a signal (reason=\"signal\").",
    doc: "processes of the container that exited with a non-zero code (`reason=\"exit_code\"`) or were killed by a signal (`reason=\"signal\"`)",
    unit: Unit::Count,
    summary: LabeledKey::Sum("failed_exits"),
    api: LabeledKey::No,
    label: "reason",
    values: |c, sample| {
        if let Some(f) = c.procs.failed {
            sample("exit_code", Value::Int(f.exit_code));
            sample("signal", Value::Int(f.signal));
        }
    },
}];

const NETWORK: &[Family] = &[
    Family {
        name: "apptheus_container_network_receive_bytes_total",
        kind: Kind::Counter,
        help: "Bytes received by the container's sockets (IP layer, any network namespace).",
        doc: "bytes received by the container's sockets, at the IP layer (headers included), in any network namespace (loopback too); omitted without a cgroup v2 (unified) hierarchy",
        unit: Unit::Bytes,
        summary: Key::Is("network_receive_bytes"),
        api: Key::No,
        value: |c| c.procs.network.map(|n| Value::Int(n.receive_bytes)),
    },
    Family {
        name: "apptheus_container_network_receive_packets_total",
        kind: Kind::Counter,
        help: "Packets received by the container's sockets.",
        doc: "packets received by the container's sockets (a segmentation-offload aggregate counts as its segments)",
        unit: Unit::Count,
        summary: Key::No,
        api: Key::No,
        value: |c| c.procs.network.map(|n| Value::Int(n.receive_packets)),
    },
    Family {
        name: "apptheus_container_network_transmit_bytes_total",
        kind: Kind::Counter,
        help: "Bytes sent by the container's sockets (IP layer, any network namespace).",
        doc: "bytes sent by the container's sockets",
        unit: Unit::Bytes,
        summary: Key::Is("network_transmit_bytes"),
        api: Key::No,
        value: |c| c.procs.network.map(|n| Value::Int(n.transmit_bytes)),
    },
    Family {
        name: "apptheus_container_network_transmit_packets_total",
        kind: Kind::Counter,
        help: "Packets sent by the container's sockets.",
        doc: "packets sent by the container's sockets",
        unit: Unit::Count,
        summary: Key::No,
        api: Key::No,
        value: |c| c.procs.network.map(|n| Value::Int(n.transmit_packets)),
    },
];

/// PSI: "some" is `waiting`, "full" is `stalled` (the names cAdvisor uses).
const PRESSURE: &[Family] = &[
    Family {
        name: "apptheus_container_pressure_cpu_waiting_seconds_total",
        kind: Kind::Counter,
        help: "Time in which at least one of the container's tasks waited for a CPU (PSI some).",
        doc: "time in which at least one of the container's tasks waited for a CPU (PSI \"some\" of its `cpu.pressure`; see [What held a container back](#what-held-a-container-back))",
        unit: Unit::Seconds,
        summary: Key::Is("pressure_cpu_waiting_seconds"),
        api: Key::No,
        value: |c| {
            c.stats
                .pressure
                .cpu
                .map(|p| Value::Float(p.waiting_seconds))
        },
    },
    Family {
        name: "apptheus_container_pressure_cpu_stalled_seconds_total",
        kind: Kind::Counter,
        help: "Time in which all the container's non-idle tasks waited for a CPU (PSI full; Linux 5.13+).",
        doc: "time in which all its non-idle tasks waited for a CPU at once (PSI \"full\"; Linux 5.13+)",
        unit: Unit::Seconds,
        summary: Key::Is("pressure_cpu_stalled_seconds"),
        api: Key::No,
        value: |c| {
            c.stats
                .pressure
                .cpu
                .and_then(|p| p.stalled_seconds)
                .map(Value::Float)
        },
    },
    Family {
        name: "apptheus_container_pressure_memory_waiting_seconds_total",
        kind: Kind::Counter,
        help: "Time in which at least one of the container's tasks waited for memory (PSI some).",
        doc: "time in which at least one of its tasks waited for memory (reclaim, swap-in, refaults; PSI \"some\")",
        unit: Unit::Seconds,
        summary: Key::Is("pressure_memory_waiting_seconds"),
        api: Key::No,
        value: |c| {
            c.stats
                .pressure
                .memory
                .map(|p| Value::Float(p.waiting_seconds))
        },
    },
    Family {
        name: "apptheus_container_pressure_memory_stalled_seconds_total",
        kind: Kind::Counter,
        help: "Time in which all the container's non-idle tasks waited for memory (PSI full).",
        doc: "time in which all its non-idle tasks waited for memory at once (PSI \"full\")",
        unit: Unit::Seconds,
        summary: Key::Is("pressure_memory_stalled_seconds"),
        api: Key::No,
        value: |c| {
            c.stats
                .pressure
                .memory
                .and_then(|p| p.stalled_seconds)
                .map(Value::Float)
        },
    },
    Family {
        name: "apptheus_container_pressure_io_waiting_seconds_total",
        kind: Kind::Counter,
        help: "Time in which at least one of the container's tasks waited for I/O (PSI some).",
        doc: "time in which at least one of its tasks waited for I/O (PSI \"some\")",
        unit: Unit::Seconds,
        summary: Key::Is("pressure_io_waiting_seconds"),
        api: Key::No,
        value: |c| c.stats.pressure.io.map(|p| Value::Float(p.waiting_seconds)),
    },
    Family {
        name: "apptheus_container_pressure_io_stalled_seconds_total",
        kind: Kind::Counter,
        help: "Time in which all the container's non-idle tasks waited for I/O (PSI full).",
        doc: "time in which all its non-idle tasks waited for I/O at once (PSI \"full\")",
        unit: Unit::Seconds,
        summary: Key::Is("pressure_io_stalled_seconds"),
        api: Key::No,
        value: |c| {
            c.stats
                .pressure
                .io
                .and_then(|p| p.stalled_seconds)
                .map(Value::Float)
        },
    },
];

const THROTTLING: &[Family] = &[
    Family {
        name: "apptheus_container_cpu_cfs_periods_total",
        kind: Kind::Counter,
        help: "CFS enforcement periods that elapsed while the container's cgroup had runnable tasks.",
        doc: "CFS enforcement periods that elapsed while the container's own cgroup had runnable tasks and a CPU quota",
        unit: Unit::Count,
        summary: Key::Is("cpu_cfs_periods"),
        api: Key::No,
        value: |c| c.stats.throttling.map(|t| Value::Int(t.periods)),
    },
    Family {
        name: "apptheus_container_cpu_cfs_throttled_periods_total",
        kind: Kind::Counter,
        help: "CFS periods in which the container's cgroup used up its CPU quota and was throttled.",
        doc: "of those, periods in which it used up its quota and was throttled",
        unit: Unit::Count,
        summary: Key::Is("cpu_cfs_throttled_periods"),
        api: Key::No,
        value: |c| c.stats.throttling.map(|t| Value::Int(t.throttled_periods)),
    },
    Family {
        name: "apptheus_container_cpu_cfs_throttled_seconds_total",
        kind: Kind::Counter,
        help: "Time the container's cgroup spent throttled by its CPU quota.",
        doc: "time its tasks spent throttled by that quota",
        unit: Unit::Seconds,
        summary: Key::Is("cpu_cfs_throttled_seconds"),
        api: Key::No,
        value: |c| {
            c.stats
                .throttling
                .map(|t| Value::Float(t.throttled_seconds))
        },
    },
];

const MEMORY_EVENTS: &[LabeledFamily] = &[LabeledFamily {
    name: "apptheus_container_memory_events_total",
    kind: Kind::Counter,
    help: "Memory events of the container's cgroup: high (over memory.high), max (at its memory limit), oom (OOM killer about to run).",
    doc: "memory events of its cgroup: `high` (over `memory.high`, v2), `max` (a charge at its memory limit), `oom` (the OOM killer about to run, v2); only those the kernel counts",
    unit: Unit::Count,
    summary: LabeledKey::EachUnder("memory_events_"),
    api: LabeledKey::No,
    label: "event",
    values: |c, sample| {
        let Some(e) = c.stats.memory_events else {
            return;
        };
        for (event, count) in [("high", e.high), ("max", e.max), ("oom", e.oom)] {
            if let Some(count) = count {
                sample(event, Value::Int(count));
            }
        }
    },
}];

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::{
        cgroup::{Cpu, Io, Memory, MemoryEvents, Pids, Pressure, Pressures, Stats, Throttling},
        container::Identity,
        tracker::{Failed, Network, ProcessCounters},
    };

    /// What the naming test needs of each family.
    struct Row {
        name: &'static str,
        kind: &'static str,
        unit: Unit,
    }

    fn rows() -> Vec<Row> {
        let mut rows = Vec::new();
        for g in GROUPS {
            for f in g.families {
                rows.push(Row {
                    name: f.name,
                    kind: f.kind.as_str(),
                    unit: f.unit,
                });
            }
            for f in g.labeled {
                rows.push(Row {
                    name: f.name,
                    kind: f.kind.as_str(),
                    unit: f.unit,
                });
            }
        }
        rows
    }

    /// A container with a value for every family, each number different from the others (a
    /// key that reads the wrong field shows).
    pub(crate) fn every_value() -> ContainerSeries {
        let pressure = |waiting_seconds, stalled| Pressure {
            waiting_seconds,
            stalled_seconds: Some(stalled),
        };
        ContainerSeries {
            identity: Arc::new(Identity {
                id: "starter_42".into(),
                user: "alice".into(),
                exe: "starter".into(),
                exe_path: "/usr/libexec/apptainer/bin/starter".into(),
                pid: 42,
                uid: "1000".into(),
                cgroup: "/apptheus/starter_42".into(),
                cgroup_label: "/apptheus/starter_42".into(),
                start_time: 1_700_000_000.5,
                job: Default::default(),
                owner: None,
            }),
            memory_source: "cgroup",
            memory_peak_source: apptheus_api::PeakSource::Kernel,
            cpus_allowed: Some(apptheus_api::summary::CpusAllowed {
                cpus: 1.5,
                source: apptheus_api::CpusSource::Quota,
            }),
            end_time: Some(1_700_000_100.25),
            stats: std::sync::Arc::new(Stats {
                cpu: Some(Cpu {
                    usage_seconds: Some(12.5),
                    user_seconds: Some(10.25),
                    system_seconds: Some(2.125),
                }),
                memory: Some(Memory {
                    usage_bytes: Some(1001),
                    working_set_bytes: Some(1002),
                    rss_bytes: Some(1003),
                    cache_bytes: Some(1004),
                    swap_bytes: Some(1005),
                    max_usage_bytes: Some(1006),
                    limit_bytes: Some(1007),
                }),
                pids: Some(Pids {
                    current: Some(11),
                    limit: Some(12),
                }),
                io: Some(Io {
                    read_bytes: 2001,
                    write_bytes: 2002,
                }),
                pressure: Pressures {
                    cpu: Some(pressure(0.5, 0.25)),
                    memory: Some(pressure(0.75, 0.375)),
                    io: Some(pressure(0.875, 0.0625)),
                },
                throttling: Some(Throttling {
                    periods: 31,
                    throttled_periods: 32,
                    throttled_seconds: 3.5,
                }),
                memory_events: Some(MemoryEvents {
                    high: Some(41),
                    max: Some(42),
                    oom: Some(43),
                }),
            }),
            procs: ProcessCounters {
                forks: 51,
                execs: 52,
                exits: 53,
                live: 54,
                untracked: 55,
                failed: Some(Failed {
                    exit_code: 56,
                    signal: 57,
                }),
                oom_kills: Some(58),
                exit_code: Some(137),
                network: Some(Network {
                    receive_bytes: 3001,
                    receive_packets: 3002,
                    transmit_bytes: 3003,
                    transmit_packets: 3004,
                }),
            },
            summary: None,
        }
    }

    /// The same container with no value anywhere it can have none: live, nothing read.
    pub(crate) fn no_value() -> ContainerSeries {
        ContainerSeries {
            cpus_allowed: None,
            end_time: None,
            stats: Default::default(),
            procs: ProcessCounters::default(),
            ..every_value()
        }
    }

    fn json(v: Value) -> serde_json::Value {
        match v {
            Value::Int(i) => i.into(),
            Value::Float(x) => x.into(),
        }
    }

    /// Holds a JSON `record` made from `series` to the table: every family whose `key` names a
    /// field of the record has the same value there, and none where it has no value (unless
    /// the record falls back to another). Returns the differences, one a line.
    pub(crate) fn differences(
        record: &serde_json::Value,
        series: &ContainerSeries,
        key: fn(&Family) -> Key,
        labeled_key: fn(&LabeledFamily) -> LabeledKey,
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        let check = |name: &str, key: Key, value: Option<Value>| {
            let (field, fallback) = match key {
                Key::No => return None,
                Key::Is(field) => (field, false),
                Key::OrElse(field) => (field, true),
            };
            let there = record.get(field).filter(|v| !v.is_null());
            match (value, there) {
                (Some(v), Some(there)) if json(v) == *there => None,
                (None, None) => None,
                (None, Some(_)) if fallback => None,
                (v, there) => Some(format!(
                    "{name}: the table's value {:?}, the record's {field} {there:?}",
                    v.map(json)
                )),
            }
        };
        for g in GROUPS {
            for f in g.families {
                wrong.extend(check(f.name, key(f), (f.value)(series)));
            }
            for f in g.labeled {
                let mut samples = BTreeMap::new();
                (f.values)(series, &mut |label, v| {
                    samples.insert(label, v);
                });
                let prefix = match labeled_key(f) {
                    LabeledKey::No => continue,
                    LabeledKey::Sum(field) => {
                        let sum = samples.values().try_fold(0, |sum, v| match v {
                            Value::Int(i) => Some(sum + i),
                            Value::Float(_) => None,
                        });
                        let sum = sum.filter(|_| !samples.is_empty()).map(Value::Int);
                        wrong.extend(check(f.name, Key::Is(field), sum));
                        continue;
                    }
                    LabeledKey::EachUnder(prefix) => prefix,
                };
                let mut samples: BTreeMap<String, Value> = (samples.into_iter())
                    .map(|(label, v)| (format!("{prefix}{label}"), v))
                    .collect();
                let fields = record.as_object().into_iter().flatten();
                for (field, there) in fields.filter(|(k, v)| k.starts_with(prefix) && !v.is_null())
                {
                    match samples.remove(field) {
                        Some(v) if json(v) == *there => {}
                        v => wrong.push(format!(
                            "{}: the table's value {:?}, the record's {field} {there:?}",
                            f.name,
                            v.map(json)
                        )),
                    }
                }
                for field in samples.keys() {
                    wrong.push(format!("{}: the record has no {field}", f.name));
                }
            }
        }
        wrong
    }

    #[test]
    fn every_family_has_a_value_in_the_full_fixture_and_none_in_the_empty_one() {
        let (full, empty) = (every_value(), no_value());
        // Only what is known of every container stays.
        let always = [
            "apptheus_container_start_time_seconds",
            "apptheus_container_processes",
            "apptheus_container_forks_total",
            "apptheus_container_execs_total",
            "apptheus_container_exits_total",
            "apptheus_container_untracked_processes_total",
        ];
        for g in GROUPS {
            for f in g.families {
                assert!((f.value)(&full).is_some(), "{}", f.name);
                assert_eq!(
                    (f.value)(&empty).is_some(),
                    always.contains(&f.name),
                    "{}",
                    f.name
                );
            }
            for f in g.labeled {
                let (mut some, mut none) = (0, 0);
                (f.values)(&full, &mut |_, _| some += 1);
                (f.values)(&empty, &mut |_, _| none += 1);
                assert!(some > 0 && none == 0, "{}", f.name);
            }
        }
    }

    /// Prometheus's conventions: one name each, counters end in `_total` and gauges do not, and
    /// the name carries the unit.
    #[test]
    fn names_follow_the_units_and_types() {
        let mut seen = std::collections::BTreeSet::new();
        for row in rows() {
            let name = row.name;
            assert!(seen.insert(name), "{name} twice");
            assert!(name.starts_with("apptheus_container_"), "{name}");
            let base = match row.kind {
                "counter" => name.strip_suffix("_total"),
                _ => (!name.ends_with("_total")).then_some(name),
            };
            let Some(base) = base else {
                panic!("{name}: a {} named against its type", row.kind);
            };
            let suffix = match row.unit {
                Unit::Seconds => Some("_seconds"),
                Unit::Bytes => Some("_bytes"),
                Unit::Cpus | Unit::Count | Unit::Status => None,
            };
            match suffix {
                Some(suffix) => assert!(base.ends_with(suffix), "{name}: {:?}", row.unit),
                None => assert!(
                    !base.ends_with("_seconds") && !base.ends_with("_bytes"),
                    "{name}: {:?}",
                    row.unit
                ),
            }
        }
    }

    /// The rows of docs/metrics.md's table the table makes: one per family, in output order.
    fn docs_rows() -> Vec<String> {
        let mut rows = Vec::new();
        for g in GROUPS {
            let plain = g.families.iter().map(|f| (f.name, &f.kind, None, f.doc));
            let labeled = (g.labeled.iter()).map(|f| (f.name, &f.kind, Some(f.label), f.doc));
            for (name, kind, label, doc) in plain.chain(labeled) {
                let labels = match label {
                    Some(label) => format!("container, user, {label}"),
                    None => "container, user".to_string(),
                };
                rows.push(format!(
                    "| `{name}` | {} | {labels} | {doc} |",
                    kind.as_str()
                ));
            }
        }
        rows
    }

    /// docs/metrics.md's table has exactly the table's per-container families, made from it
    /// (`apptheus/tests/prometheus.rs` compares the whole table with a live daemon). They
    /// follow the info and job series, which are not in the table: their labels are their
    /// value, rendered on their own. With APPTHEUS_WRITE_DOCS=1 the rows are written.
    #[test]
    fn the_docs_table_is_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let docs = std::fs::read_to_string(path).unwrap();
        let (_, rest) = docs.split_once("<!-- metrics:begin -->").unwrap();
        let (table, _) = rest.split_once("<!-- metrics:end -->").unwrap();
        let ours = |line: &str| {
            line.starts_with("| `apptheus_container_")
                && !line.starts_with("| `apptheus_container_info`")
                && !line.starts_with("| `apptheus_container_job_info`")
        };
        let lines: Vec<&str> = table.lines().collect();
        let (Some(first), Some(last)) = (
            lines.iter().position(|l| ours(l)),
            lines.iter().rposition(|l| ours(l)),
        ) else {
            panic!("docs/metrics.md's table has no per-container family");
        };
        let documented = &lines[first..=last];
        let made = docs_rows();
        if documented == made.as_slice() {
            return;
        }
        if std::env::var_os("APPTHEUS_WRITE_DOCS").is_some() {
            let old = documented.join("\n");
            let docs = docs.replacen(&old, &made.join("\n"), 1);
            std::fs::write(path, docs).unwrap();
            return;
        }
        let name = |row: &str| row.split('`').nth(1).unwrap_or_default().to_string();
        let mut wrong = Vec::new();
        for row in &made {
            match documented.iter().find(|d| name(d) == name(row)) {
                None => wrong.push(format!("missing: {row}")),
                Some(d) if d != row => wrong.push(format!("docs: {d}\ntable: {row}")),
                Some(_) => {}
            }
        }
        for d in documented {
            if !made.iter().any(|row| name(row) == name(d)) {
                wrong.push(format!("not in the table (or not among its rows): {d}"));
            }
        }
        if wrong.is_empty() {
            wrong.push("the rows are in another order than the families'".into());
        }
        panic!(
            "docs/metrics.md's per-container rows are not the table's \
             (APPTHEUS_WRITE_DOCS=1 cargo test -p apptheus --lib the_docs_table writes them):\n{}",
            wrong.join("\n")
        );
    }

    /// `a_{b,c}_d` as `a_b_d` and `a_c_d`; a `{label}` without a comma stays (a labeled
    /// family's label).
    fn expand(pattern: &str) -> Vec<String> {
        let Some((head, rest)) = pattern.split_once('{') else {
            return vec![pattern.to_string()];
        };
        let Some((choices, tail)) = rest.split_once('}') else {
            return vec![pattern.to_string()];
        };
        if !choices.contains(',') {
            return vec![pattern.to_string()];
        }
        let tails = expand(tail);
        let mut out = Vec::new();
        for choice in choices.split(',') {
            out.extend(tails.iter().map(|t| format!("{head}{choice}{t}")));
        }
        out
    }

    /// docs/metrics.md's Collectors section names each group's families and its series per
    /// container as the table has them, and the core's series (the always-on group, with the
    /// info and job series) in its sentence.
    #[test]
    fn the_docs_collectors_are_the_groups() {
        let docs = include_str!("../../../docs/metrics.md");
        let (_, section) = docs.split_once("## Collectors").unwrap();
        let short = |name: &'static str| name.trim_start_matches("apptheus_container_");
        let mut wrong = Vec::new();
        let core = GROUPS[0].families.len() + 2;
        if !section.contains(&format!("up to {core} series per container")) {
            wrong.push(format!(
                "the core has up to {core} series per container (info, job and {})",
                GROUPS[0].families.len()
            ));
        }
        for g in GROUPS {
            let Some(collector) = g.collector else {
                continue;
            };
            let row = format!("| `{}` |", collector.name());
            let Some(line) = section.lines().find(|l| l.starts_with(&row)) else {
                wrong.push(format!("no row for {}", collector.name()));
                continue;
            };
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let mut documented: Vec<String> = cells[1]
                .split('`')
                .skip(1)
                .step_by(2)
                .flat_map(expand)
                .collect();
            let mut ours: Vec<String> = g
                .families
                .iter()
                .map(|f| short(f.name).to_string())
                .collect();
            ours.extend(
                g.labeled
                    .iter()
                    .map(|f| format!("{}{{{}}}", short(f.name), f.label)),
            );
            documented.sort();
            ours.sort();
            if documented != ours {
                wrong.push(format!(
                    "{}: docs {documented:?}, table {ours:?}",
                    collector.name()
                ));
            }
            // Plain families: one series each at most, the count the cell starts with.
            let count: String = cells[2].chars().take_while(char::is_ascii_digit).collect();
            if g.labeled.is_empty() && count != g.families.len().to_string() {
                wrong.push(format!(
                    "{}: docs {} series, table {}",
                    collector.name(),
                    cells[2],
                    g.families.len()
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "docs/metrics.md's Collectors and the table differ:\n{}",
            wrong.join("\n")
        );
    }
}
