//! The metrics: the daemon's own (a `prometheus` registry) and the containers' series, which the
//! sampler publishes as a snapshot once per pass. A scrape renders a snapshot at most once (and
//! gzips it at most once), however many scrapes come in between passes.
use std::{
    fmt::Write as _,
    io::Write as _,
    sync::{Arc, Mutex, OnceLock},
};

use anyhow::Result;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::{cgroup::Stats, gateway::Rejection, tracker::ProcessCounters};

/// The daemon's own metrics.
pub struct Metrics {
    registry: Registry,
    pub containers: IntGauge,
    connections: IntCounterVec,
    rejections: IntCounterVec,
    pub sample_duration: Histogram,
    events_lost: IntCounter,
    snapshot: Mutex<Arc<Snapshot>>,
}

impl Metrics {
    pub fn new() -> Result<Metrics> {
        let registry = Registry::new();
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "apptheus_build_info",
                "A metric with a constant '1' value labeled by the version and revision of apptheus.",
            ),
            &["version", "revision"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("APPTHEUS_REVISION")])
            .set(1);
        let containers = IntGauge::new(
            "apptheus_containers",
            "Live containers (with at least one process).",
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "apptheus_gateway_connections_total",
                "Launcher connections, by outcome.",
            ),
            &["outcome"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "apptheus_gateway_rejections_total",
                "Refused launcher connections, by reason.",
            ),
            &["reason"],
        )?;
        let sample_duration = Histogram::with_opts(
            HistogramOpts::new(
                "apptheus_sample_duration_seconds",
                "Duration of one sampling pass over all containers.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let events_lost = IntCounter::new(
            "apptheus_ebpf_events_lost_total",
            "Process events the eBPF programs could not hand to userspace (ring buffer full).",
        )?;
        // Every label value that can occur, from zero, so rates work from the first scrape.
        for outcome in ["accepted", "rejected"] {
            connections.with_label_values(&[outcome]);
        }
        for r in Rejection::ALL {
            rejections.with_label_values(&[r.as_str()]);
        }
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(containers.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(sample_duration.clone()))?;
        registry.register(Box::new(events_lost.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            containers,
            connections,
            rejections,
            sample_duration,
            events_lost,
            snapshot: Mutex::new(Arc::new(Snapshot::new(Vec::new()))),
        })
    }

    pub fn accepted(&self) {
        self.connections.with_label_values(&["accepted"]).inc();
    }

    pub fn rejected(&self, reason: Rejection) {
        self.connections.with_label_values(&["rejected"]).inc();
        self.rejections.with_label_values(&[reason.as_str()]).inc();
    }

    /// The kernel's running total of lost events.
    pub fn set_events_lost(&self, total: u64) {
        let seen = self.events_lost.get();
        if total > seen {
            self.events_lost.inc_by(total - seen);
        }
    }

    /// Replace the containers' series with a new pass's.
    pub fn publish(&self, series: Vec<ContainerSeries>) {
        let snap = Arc::new(Snapshot::new(series));
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = snap;
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The daemon's own families in the text format. Blocking (the process collector reads /proc).
    pub fn encode_daemon(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!(error:% = e; "encoding the daemon's metrics");
        }
        out
    }
}

/// One container's labels and last values.
#[derive(Clone, Debug)]
pub struct ContainerSeries {
    pub id: String,
    pub user: String,
    pub exe: String,
    pub exe_path: String,
    pub pid: i32,
    pub uid: u32,
    pub cgroup: String,
    pub memory_source: &'static str,
    pub start_time: f64,
    /// Unix time the last process exited; none while the container lives.
    pub end_time: Option<f64>,
    pub stats: Stats,
    pub procs: ProcessCounters,
}

/// The containers' series of one sampling pass, rendered on first use.
pub struct Snapshot {
    series: Vec<ContainerSeries>,
    text: OnceLock<Vec<u8>>,
    gzip: OnceLock<Vec<u8>>,
}

impl Snapshot {
    fn new(series: Vec<ContainerSeries>) -> Snapshot {
        Snapshot {
            series,
            text: OnceLock::new(),
            gzip: OnceLock::new(),
        }
    }

    pub fn text(&self) -> &[u8] {
        self.text.get_or_init(|| render(&self.series).into_bytes())
    }

    /// The text as one gzip member; members concatenate into a valid gzip stream.
    pub fn gzip(&self) -> &[u8] {
        self.gzip.get_or_init(|| gzip(self.text()))
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 8 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

enum Kind {
    Gauge,
    Counter,
}

/// A per-container family: name, type, help, and how to get its value.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: fn(&ContainerSeries) -> Option<Value>,
}

enum Value {
    Int(u64),
    Float(f64),
}

const FAMILIES: &[Family] = &[
    Family {
        name: "apptheus_container_start_time_seconds",
        kind: Kind::Gauge,
        help: "Unix time the container was registered.",
        value: |c| Some(Value::Float(c.start_time)),
    },
    Family {
        name: "apptheus_container_end_time_seconds",
        kind: Kind::Gauge,
        help: "Unix time the container's last process exited (only for ended containers).",
        value: |c| c.end_time.map(Value::Float),
    },
    Family {
        name: "apptheus_container_cpu_usage_seconds_total",
        kind: Kind::Counter,
        help: "CPU time consumed by the container's cgroup.",
        value: |c| c.stats.cpu_usage_seconds.map(Value::Float),
    },
    Family {
        name: "apptheus_container_cpu_user_seconds_total",
        kind: Kind::Counter,
        help: "User CPU time consumed by the container's cgroup.",
        value: |c| c.stats.cpu_user_seconds.map(Value::Float),
    },
    Family {
        name: "apptheus_container_cpu_system_seconds_total",
        kind: Kind::Counter,
        help: "System CPU time consumed by the container's cgroup.",
        value: |c| c.stats.cpu_system_seconds.map(Value::Float),
    },
    Family {
        name: "apptheus_container_memory_usage_bytes",
        kind: Kind::Gauge,
        help: "Current memory usage.",
        value: |c| c.stats.memory_usage_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_working_set_bytes",
        kind: Kind::Gauge,
        help: "Memory usage minus inactive file cache.",
        value: |c| c.stats.memory_working_set_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_rss_bytes",
        kind: Kind::Gauge,
        help: "Anonymous memory.",
        value: |c| c.stats.memory_rss_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_cache_bytes",
        kind: Kind::Gauge,
        help: "Page cache memory.",
        value: |c| c.stats.memory_cache_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_swap_bytes",
        kind: Kind::Gauge,
        help: "Swap in use.",
        value: |c| c.stats.memory_swap_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_memory_max_usage_bytes",
        kind: Kind::Gauge,
        help: "Peak memory usage.",
        value: |c| c.stats.memory_max_usage_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_spec_memory_limit_bytes",
        kind: Kind::Gauge,
        help: "Memory limit of the container (the smallest along its cgroup path).",
        value: |c| c.stats.memory_limit_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_pids",
        kind: Kind::Gauge,
        help: "Tasks in the container's cgroup.",
        value: |c| c.stats.pids.map(Value::Int),
    },
    Family {
        name: "apptheus_container_spec_pids_limit",
        kind: Kind::Gauge,
        help: "Pids limit of the container (the smallest along its cgroup path).",
        value: |c| c.stats.pids_limit.map(Value::Int),
    },
    Family {
        name: "apptheus_container_blkio_read_bytes_total",
        kind: Kind::Counter,
        help: "Bytes read from block devices.",
        value: |c| c.stats.blkio_read_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_blkio_write_bytes_total",
        kind: Kind::Counter,
        help: "Bytes written to block devices.",
        value: |c| c.stats.blkio_write_bytes.map(Value::Int),
    },
    Family {
        name: "apptheus_container_processes",
        kind: Kind::Gauge,
        help: "Live processes of the container, tracked by the eBPF hooks.",
        value: |c| Some(Value::Int(c.procs.live)),
    },
    Family {
        name: "apptheus_container_forks_total",
        kind: Kind::Counter,
        help: "Processes forked inside the container (eBPF).",
        value: |c| Some(Value::Int(c.procs.forks)),
    },
    Family {
        name: "apptheus_container_execs_total",
        kind: Kind::Counter,
        help: "execve calls inside the container (eBPF).",
        value: |c| Some(Value::Int(c.procs.execs)),
    },
    Family {
        name: "apptheus_container_exits_total",
        kind: Kind::Counter,
        help: "Processes of the container that exited (eBPF).",
        value: |c| Some(Value::Int(c.procs.exits)),
    },
];

/// The containers' families in the text exposition format 0.0.4. A family with no value for
/// any container is left out entirely.
pub fn render(series: &[ContainerSeries]) -> String {
    let mut out = String::with_capacity(series.len() * 2200 + 1024);
    // Label sets are the same for every family of a container: escape them once.
    let labels: Vec<String> = series
        .iter()
        .map(|c| {
            format!(
                "container=\"{}\",user=\"{}\"",
                escape(&c.id),
                escape(&c.user)
            )
        })
        .collect();
    if !series.is_empty() {
        out.push_str("# HELP apptheus_container_info Information about a monitored container (constant 1).\n# TYPE apptheus_container_info gauge\n");
        for (c, l) in series.iter().zip(&labels) {
            let _ = writeln!(
                out,
                "apptheus_container_info{{{l},exe=\"{}\",exe_path=\"{}\",pid=\"{}\",uid=\"{}\",cgroup=\"{}\",memory_source=\"{}\"}} 1",
                escape(&c.exe),
                escape(&c.exe_path),
                c.pid,
                c.uid,
                escape(&c.cgroup),
                c.memory_source
            );
        }
    }
    for f in FAMILIES {
        let mut header = false;
        for (c, l) in series.iter().zip(&labels) {
            let Some(v) = (f.value)(c) else { continue };
            if !header {
                let kind = match f.kind {
                    Kind::Gauge => "gauge",
                    Kind::Counter => "counter",
                };
                let _ = write!(
                    out,
                    "# HELP {} {}\n# TYPE {} {kind}\n",
                    f.name, f.help, f.name
                );
                header = true;
            }
            let _ = match v {
                Value::Int(i) => writeln!(out, "{}{{{l}}} {i}", f.name),
                Value::Float(x) => writeln!(out, "{}{{{l}}} {}", f.name, float(x)),
            };
        }
    }
    out
}

/// A float as the text format wants it (Rust's Display never uses exponents; only the special
/// values need care).
fn float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        x.to_string()
    }
}

/// Escape a label value: backslash, double quote and newline.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '"', '\n']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(id: &str) -> ContainerSeries {
        ContainerSeries {
            id: id.into(),
            user: "alice".into(),
            exe: "starter".into(),
            exe_path: "/usr/libexec/apptainer/bin/starter".into(),
            pid: 42,
            uid: 1000,
            cgroup: "/apptheus/starter_42".into(),
            memory_source: "cgroup",
            start_time: 1_700_000_000.5,
            end_time: None,
            stats: Stats {
                cpu_usage_seconds: Some(1.25),
                memory_usage_bytes: Some(4096),
                ..Default::default()
            },
            procs: ProcessCounters {
                forks: 3,
                execs: 1,
                exits: 2,
                live: 2,
            },
        }
    }

    #[test]
    fn renders_families_once_with_labels() {
        let text = render(&[series("starter_42"), series("weird\"id\\\n")]);
        assert_eq!(
            text.matches("# TYPE apptheus_container_cpu_usage_seconds_total counter")
                .count(),
            1
        );
        assert!(text.contains("apptheus_container_cpu_usage_seconds_total{container=\"starter_42\",user=\"alice\"} 1.25\n"));
        assert!(text.contains("container=\"weird\\\"id\\\\\\n\""));
        assert!(
            text.contains(
                "apptheus_container_processes{container=\"starter_42\",user=\"alice\"} 2\n"
            )
        );
        assert!(text.contains("memory_source=\"cgroup\"} 1\n"));
        // No value anywhere: no family.
        assert!(!text.contains("apptheus_container_memory_swap_bytes"));
    }

    #[test]
    fn empty_snapshot_renders_nothing() {
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn gzip_members_concatenate() {
        use std::io::Read as _;
        let mut both = gzip(b"a 1\n");
        both.extend(gzip(b"b 2\n"));
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(&both[..])
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "a 1\nb 2\n");
    }
}
