//! Loading the embedded programs with this kernel's tracepoint layouts, and attaching them.
use std::collections::HashMap;

use aya::{
    EbpfLoader,
    maps::{HashMap as BpfHashMap, PerCpuArray, RingBuf},
    programs::TracePoint,
};

use super::{Error, EventStream, Maps, Tracker, ensure_tracefs, proctable::ProcTable, tracefs};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apptheus"));

/// The programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str, &str); 4] = [
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

impl Tracker {
    /// Mount tracefs if needed, read this kernel's tracepoint layouts, load the embedded object
    /// with them, and attach every program. Must run inside a tokio runtime (the event stream
    /// registers with its reactor).
    pub fn load() -> Result<(Tracker, EventStream), Error> {
        let load = |what: &str, e: &dyn std::fmt::Display| Error::Load(format!("{what}: {e}"));
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Load("Tracker::load must run inside a tokio runtime".into()))?;
        raise_memlock_limit();
        ensure_tracefs().map_err(|e| Error::Load(format!("{e:#}")))?;
        let offsets = tracefs::read_offsets().map_err(|e| Error::Load(format!("{e:#}")))?;
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                load(
                    "loading the eBPF object (needs root: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)",
                    &e,
                )
            })?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF log forwarding unavailable");
                None
            }
        };
        for (name, category, event) in PROGRAMS {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::Load(format!("program {name} missing from the eBPF object")))?
                .try_into()
                .map_err(|e| load(&format!("program {name}"), &e))?;
            prog.load()
                .map_err(|e| load(&format!("loading eBPF program {name}"), &e))?;
            prog.attach(category, event).map_err(|e| {
                load(
                    &format!("attaching {name} to tracepoint {category}/{event}"),
                    &e,
                )
            })?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Load(format!("map {name} missing from the eBPF object")))
        };
        let (tracked, counters, lost, ring) = (
            take("TRACKED")?,
            take("COUNTERS")?,
            take("LOST")?,
            take("EVENTS")?,
        );
        let maps = Maps {
            tracked: BpfHashMap::try_from(tracked).map_err(|e| load("map TRACKED", &e))?,
            counters: BpfHashMap::try_from(counters).map_err(|e| load("map COUNTERS", &e))?,
            lost: PerCpuArray::try_from(lost).map_err(|e| load("map LOST", &e))?,
            adopted: HashMap::new(),
        };
        let ring = RingBuf::try_from(ring).map_err(|e| load("map EVENTS", &e))?;
        let events =
            EventStream::new(ring, logger).map_err(|e| load("watching the event ring", &e))?;
        let tracker = Tracker {
            maps: std::sync::Mutex::new(maps),
            procs: std::sync::Mutex::new(ProcTable::default()),
            _ebpf: ebpf,
        };
        Ok((tracker, events))
    }
}

fn raise_memlock_limit() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {e}");
    }
}
