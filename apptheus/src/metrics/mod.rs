//! The metrics: the daemon's own (a `prometheus` registry) and the containers' series, which the
//! sampler publishes as a snapshot once per pass. A scrape renders a snapshot at most once (and
//! gzips it at most once), however many scrapes come in between passes.
//!
//! - `families`: the per-container families, each defined once (the table `render` renders and
//!   the tests hold the summary record, `/api/containers` and docs/metrics.md to);
//! - `render`: the containers' families in the text format;
//! - `gzip`: one gzip stream of the daemon's text and a snapshot's, compressed once per pass.
pub(crate) mod families;
mod gzip;
mod render;

use gzip::DeflateWriter;
pub use gzip::{Deflated, gzip, gzip_response};
pub use render::render;
use render::render_into;
use std::sync::{Arc, OnceLock};

use anyhow::Result;
use apptheus_api::{PeakSource, Summary, summary::CpusAllowed};
use bytes::Bytes;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::{
    cgroup::Stats, collectors::Collectors, container::Identity, launcher::Rejection,
    tracker::ProcessCounters,
};

/// The files the daemon writes: the `file` label of `apptheus_write_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    SummaryFile,
    StateFile,
}

impl Output {
    pub const ALL: [Output; 2] = [Output::SummaryFile, Output::StateFile];

    pub fn as_str(self) -> &'static str {
        match self {
            Output::SummaryFile => "summary",
            Output::StateFile => "state",
        }
    }
}

/// How a query socket connection ended: the `outcome` label of
/// `apptheus_query_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryOutcome {
    /// Its request was answered (a container not found included).
    Answered,
    /// Closed at once, over the bounds (connections in all or of its user, or the answers'
    /// turns taken until its deadline).
    Refused,
    /// Its request was not one (too long, not UTF-8, control characters, unknown, too late).
    BadRequest,
}

impl QueryOutcome {
    pub const ALL: [QueryOutcome; 3] = [
        QueryOutcome::Answered,
        QueryOutcome::Refused,
        QueryOutcome::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QueryOutcome::Answered => "answered",
            QueryOutcome::Refused => "refused",
            QueryOutcome::BadRequest => "bad_request",
        }
    }
}

/// The daemon's own metrics.
pub struct Metrics {
    registry: Registry,
    pub containers: IntGauge,
    connections: IntCounterVec,
    rejections: IntCounterVec,
    pub sample_duration: Histogram,
    admission_wait: Histogram,
    write_errors: IntCounterVec,
    events_lost: IntCounter,
    walks_cut_short: IntCounter,
    descriptors_held: IntGaugeVec,
    descriptors_budget: IntGauge,
    queries: IntCounterVec,
    snapshot: arc_swap::ArcSwap<Snapshot>,
    /// The containers' groups that are rendered.
    collectors: Collectors,
}

impl Metrics {
    /// Every group of the containers' families on.
    pub fn new() -> Result<Metrics> {
        Metrics::with_collectors(Collectors::default())
    }

    /// Without the families of the disabled `collectors`.
    pub fn with_collectors(collectors: Collectors) -> Result<Metrics> {
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
        let admission_wait = Histogram::with_opts(
            HistogramOpts::new(
                "apptheus_gateway_admission_wait_seconds",
                "Time trusted launchers waited for their user's turn under --gateway.admission-rate-per-user before admission.",
            )
            .buckets(vec![0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )?;
        let write_errors = IntCounterVec::new(
            Opts::new(
                "apptheus_write_errors_total",
                "Failed writes of the daemon's files (a full filesystem, say), by file: the summary file's records are kept and written later, the state file is saved again at the next pass.",
            ),
            &["file"],
        )?;
        let events_lost = IntCounter::new(
            "apptheus_ebpf_events_lost_total",
            "Process events the eBPF programs could not hand to userspace (ring buffer full).",
        )?;
        let walks_cut_short = IntCounter::new(
            "apptheus_adoption_walks_cut_short_total",
            "Walks of a launcher's process tree stopped at their bound (a tree that forks faster than it can be walked); each goes on at the next passes.",
        )?;
        let descriptors_held = IntGaugeVec::new(
            Opts::new(
                "apptheus_descriptors_held",
                "Descriptors held in the budget the containers share, by holder: containers (their launchers' connections, and the pidfds of trees being moved), probes (CPU probe files kept open between passes).",
            ),
            &["by"],
        )?;
        let descriptors_budget = IntGauge::new(
            "apptheus_descriptors_budget",
            "Descriptors the containers and the kept-open probes share: the descriptor limit less a reserve for the daemon's own, its HTTP and query connections and its files. A launcher past it is refused (reason=\"descriptors\"); probes give their room up to connections.",
        )?;
        let queries = IntCounterVec::new(
            Opts::new(
                "apptheus_query_requests_total",
                "Connections to the query socket, by outcome: answered, refused (over its bounds), bad_request.",
            ),
            &["outcome"],
        )?;
        for o in QueryOutcome::ALL {
            queries.with_label_values(&[o.as_str()]);
        }
        // Every label value that can occur, from zero, so rates work from the first scrape.
        for outcome in ["accepted", "rejected"] {
            connections.with_label_values(&[outcome]);
        }
        for r in Rejection::ALL {
            rejections.with_label_values(&[r.as_str()]);
        }
        for f in Output::ALL {
            write_errors.with_label_values(&[f.as_str()]);
        }
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(containers.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(sample_duration.clone()))?;
        registry.register(Box::new(admission_wait.clone()))?;
        registry.register(Box::new(write_errors.clone()))?;
        registry.register(Box::new(events_lost.clone()))?;
        registry.register(Box::new(walks_cut_short.clone()))?;
        registry.register(Box::new(queries.clone()))?;
        registry.register(Box::new(descriptors_held.clone()))?;
        registry.register(Box::new(descriptors_budget.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            containers,
            connections,
            rejections,
            sample_duration,
            admission_wait,
            write_errors,
            events_lost,
            walks_cut_short,
            descriptors_held,
            descriptors_budget,
            queries,
            snapshot: arc_swap::ArcSwap::from_pointee(Snapshot::new(Vec::new(), collectors)),
            collectors,
        })
    }

    pub fn accepted(&self) {
        self.connections.with_label_values(&["accepted"]).inc();
    }

    pub fn rejected(&self, reason: Rejection) {
        self.connections.with_label_values(&["rejected"]).inc();
        self.rejections.with_label_values(&[reason.as_str()]).inc();
    }

    /// A trusted launcher waited `wait` for its user's admission turn.
    pub fn admission_waited(&self, wait: std::time::Duration) {
        self.admission_wait.observe(wait.as_secs_f64());
    }

    /// A query socket connection ended so.
    pub fn query(&self, outcome: QueryOutcome) {
        self.queries.with_label_values(&[outcome.as_str()]).inc();
    }

    /// `file`'s running total of failed writes.
    pub fn set_write_errors(&self, file: Output, total: u64) {
        let counter = self.write_errors.with_label_values(&[file.as_str()]);
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// The kernel's running total of lost events.
    pub fn set_events_lost(&self, total: u64) {
        let seen = self.events_lost.get();
        if total > seen {
            self.events_lost.inc_by(total - seen);
        }
    }

    /// The registry's running total of walks cut short.
    pub fn set_walks_cut_short(&self, total: u64) {
        let seen = self.walks_cut_short.get();
        if total > seen {
            self.walks_cut_short.inc_by(total - seen);
        }
    }

    /// The descriptor budget now.
    pub fn set_descriptors(&self, containers: usize, probes: usize, budget: usize) {
        let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let held = |by: &str| self.descriptors_held.with_label_values(&[by]);
        held("containers").set(gauge(containers));
        held("probes").set(gauge(probes));
        self.descriptors_budget.set(gauge(budget));
    }

    /// Replace the containers' series with a new pass's.
    pub fn publish(&self, series: Vec<ContainerSeries>) {
        self.snapshot
            .store(Arc::new(Snapshot::new(series, self.collectors)));
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
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
    pub identity: Arc<Identity>,
    pub memory_source: &'static str,
    pub memory_peak_source: PeakSource,
    /// The CPUs it may use, read at its first pass.
    pub cpus_allowed: Option<CpusAllowed>,
    /// Unix time the last process exited; none while the container lives.
    pub end_time: Option<f64>,
    /// Its values: the sampler's own, shared (replaced when a pass reads a change).
    pub stats: Arc<Stats>,
    pub procs: ProcessCounters,
    /// Its summary record, once its final values were taken (an ended container's).
    pub summary: Option<Arc<Summary>>,
}

/// The containers' series of one sampling pass, rendered on first use.
pub struct Snapshot {
    series: Vec<ContainerSeries>,
    collectors: Collectors,
    text: OnceLock<Bytes>,
    deflate: OnceLock<Deflated>,
}

impl Snapshot {
    fn new(series: Vec<ContainerSeries>, collectors: Collectors) -> Snapshot {
        Snapshot {
            series,
            collectors,
            text: OnceLock::new(),
            deflate: OnceLock::new(),
        }
    }

    /// The containers' series of this pass (for the web page and its JSON).
    pub fn series(&self) -> &[ContainerSeries] {
        &self.series
    }

    /// The rendered text, shared by every scrape of this pass (a clone is a reference count).
    pub fn text(&self) -> Bytes {
        self.text
            .get_or_init(|| Bytes::from(render(&self.series, self.collectors)))
            .clone()
    }

    /// The text compressed once per pass (see `gzip_response`); rendered straight into the
    /// compressor unless a plain scrape rendered it already.
    pub fn deflated(&self) -> &Deflated {
        self.deflate.get_or_init(|| match self.text.get() {
            Some(text) => Deflated::new(text),
            None => {
                let mut w = DeflateWriter::new(self.series.len() * 2200);
                render_into(&self.series, self.collectors, &mut w);
                w.finish()
            }
        })
    }
}
