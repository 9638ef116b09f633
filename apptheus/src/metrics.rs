//! The metrics: the daemon's own (a `prometheus` registry) and the containers' series, which the
//! sampler publishes as a snapshot once per pass. A scrape renders a snapshot at most once (and
//! gzips it at most once), however many scrapes come in between passes.
use std::{
    fmt::Write as _,
    io::Write as _,
    sync::{Arc, Mutex, OnceLock},
};

use anyhow::Result;
use bytes::Bytes;
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
            tracing::error!(error = %e, "encoding the daemon's metrics");
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
    text: OnceLock<Bytes>,
    deflate: OnceLock<Deflated>,
}

impl Snapshot {
    fn new(series: Vec<ContainerSeries>) -> Snapshot {
        Snapshot {
            series,
            text: OnceLock::new(),
            deflate: OnceLock::new(),
        }
    }

    /// The rendered text, shared by every scrape of this pass (a clone is a reference count).
    pub fn text(&self) -> Bytes {
        self.text
            .get_or_init(|| Bytes::from(render(&self.series)))
            .clone()
    }

    /// The text compressed once per pass (see `gzip_response`).
    pub fn deflated(&self) -> &Deflated {
        self.deflate.get_or_init(|| Deflated::new(&self.text()))
    }
}

/// A text compressed as raw deflate blocks that end a stream, with its CRC-32 and length: the
/// tail of a gzip response that any text can be put in front of.
pub struct Deflated {
    blocks: Bytes,
    /// The CRC-32 and length of the text.
    crc: flate2::Crc,
}

impl Deflated {
    pub fn new(text: &[u8]) -> Deflated {
        let mut enc = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(text.len() / 8 + 64),
            flate2::Compression::fast(),
        );
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(text);
        let mut crc = flate2::Crc::new();
        crc.update(text);
        Deflated {
            blocks: Bytes::from(enc.finish().unwrap_or_default()),
            crc,
        }
    }
}

/// One gzip stream (a single member: some clients, curl among them, read only the first) of
/// `head` followed by `tail`'s text, without compressing the tail again: `head` goes in as
/// stored (uncompressed, byte-aligned) blocks, then the tail's blocks, then the CRC of both,
/// combined from their own. For each scrape: the daemon's few KB in front of the pass's
/// containers.
pub fn gzip_response(head: &[u8], tail: &Deflated) -> [Bytes; 3] {
    // A stored block holds at most 65535 bytes: header byte (BFINAL=0, BTYPE=00), LEN, NLEN.
    const MAX_BLOCK: usize = 0xffff;
    let mut front = Vec::with_capacity(head.len() + head.len() / MAX_BLOCK * 5 + 16);
    // ID1 ID2, CM=deflate, no flags, no mtime, XFL 0, OS unknown.
    front.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    for block in head.chunks(MAX_BLOCK) {
        let len = block.len() as u16;
        front.push(0);
        front.extend_from_slice(&len.to_le_bytes());
        front.extend_from_slice(&(!len).to_le_bytes());
        front.extend_from_slice(block);
    }
    let mut crc = flate2::Crc::new();
    crc.update(head);
    crc.combine(&tail.crc);
    let mut trailer = Vec::with_capacity(8);
    trailer.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the length modulo 2^32, as flate2 counts it.
    trailer.extend_from_slice(&crc.amount().to_le_bytes());
    [
        Bytes::from(front),
        tail.blocks.clone(),
        Bytes::from(trailer),
    ]
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
    fn gzip_response_is_one_member_of_both_texts() {
        use std::io::Read as _;
        let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for (head, tail) in [
            (&b""[..], &b"b 2\n"[..]),
            (b"a 1\n", b"b 2\n"),
            (&big, b"b 2\n"),
            (b"a 1\n", &big),
            (b"", b""),
        ] {
            let gz: Vec<u8> = gzip_response(head, &Deflated::new(tail)).concat();
            // A single-member decoder (what curl uses) must see everything, and nothing may
            // follow the member.
            let mut dec = flate2::read::GzDecoder::new(&gz[..]);
            let mut out = Vec::new();
            dec.read_to_end(&mut out).unwrap();
            assert_eq!(out, [head, tail].concat());
            let mut rest = Vec::new();
            dec.into_inner().read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{} bytes after the member", rest.len());
        }
    }
}
