//! Loading the embedded programs with this kernel's tracepoint layouts, and attaching them.
use std::collections::HashMap;

use aya::{
    EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, PerCpuArray, RingBuf},
    programs::TracePoint,
};

use super::{
    Error, EventStream, Maps, Tracker, ensure_tracefs,
    proctable::ProcTable,
    tracefs,
    tracked::{PidBits, TrackedMap, bitmap_words},
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apptheus"));

/// The programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str, &str); 3] = [
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

fn load_error(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Load(format!("{what}: {e}"))
}

impl Tracker {
    /// Mount tracefs if needed, read this kernel's tracepoint layouts, load the embedded object
    /// with them, and attach every program. Must run inside a tokio runtime (the event stream
    /// registers with its reactor).
    pub fn load() -> Result<(Tracker, EventStream), Error> {
        let load = load_error;
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Load("Tracker::load must run inside a tokio runtime".into()))?;
        raise_memlock_limit();
        ensure_tracefs().map_err(|e| Error::Load(format!("{e:#}")))?;
        let offsets = tracefs::read_offsets().map_err(|e| Error::Load(format!("{e:#}")))?;
        let words = bitmap_words();
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("TRACKED_PIDS", words)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                load(
                    "loading the eBPF object (needs root: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)",
                    &e,
                )
            })?;
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
        let (tracked, bits, counters, errors, ring) = (
            take("TRACKED")?,
            take("TRACKED_PIDS")?,
            take("COUNTERS")?,
            take("ERRORS")?,
            take("EVENTS")?,
        );
        let Map::Array(bits) = bits else {
            return Err(Error::Load("map TRACKED_PIDS is not an array".into()));
        };
        let bits = PidBits::map(bits, words).map_err(|e| load("mapping TRACKED_PIDS", &e))?;
        let tracked = BpfHashMap::try_from(tracked).map_err(|e| load("map TRACKED", &e))?;
        let maps = Maps {
            tracked: TrackedMap::new(tracked, bits),
            counters: BpfHashMap::try_from(counters).map_err(|e| load("map COUNTERS", &e))?,
            errors: PerCpuArray::try_from(errors).map_err(|e| load("map ERRORS", &e))?,
            adopted: HashMap::new(),
            procs: ProcTable::default(),
        };
        let ring = RingBuf::try_from(ring).map_err(|e| load("map EVENTS", &e))?;
        let events = EventStream::new(ring).map_err(|e| load("watching the event ring", &e))?;
        let tracker = Tracker {
            maps: std::sync::Mutex::new(maps),
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
