//! Loading the embedded programs with this kernel's tracepoint layouts, and attaching them.

use apptheus_common::NO_FIELD;
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, PerCpuArray, RingBuf},
    programs::{CgroupSkb, Program, ProgramError, RawTracePoint, TracePoint},
};

use super::{
    Error, EventStream, Features, Limits, Maps, Tracker, ensure_tracefs,
    network::{self, NetMaps},
    proctable::ProcTable,
    tracefs,
    tracked::{PidBits, TrackedMap, bitmap_words},
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apptheus"));

/// The fork hook, a raw tracepoint (it reads the new task), and the tracepoint it attaches to.
const FORK_PROGRAM: (&str, &str) = ("task_newtask", "task_newtask");

/// The other programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str, &str); 2] = [
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

fn load_error(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Load(format!("{what}: {e}"))
}

/// The program `name` of the object, as the kind `P` it must be.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Load(format!("program {name} missing from the eBPF object")))?
        .try_into()
        .map_err(|e| load_error(&format!("program {name}"), &e))
}

impl Tracker {
    /// Mount tracefs if needed, read this kernel's tracepoint layouts and BTF offsets, load the
    /// embedded object with them and with maps sized for `limits`, and attach every tracepoint
    /// program (the network programs are attached by `count_network_below`). Must run inside a tokio
    /// runtime (the event stream registers with its reactor).
    pub fn load(limits: Limits) -> Result<(Tracker, EventStream), Error> {
        let load = load_error;
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Load("Tracker::load must run inside a tokio runtime".into()))?;
        let (containers, processes) = limits.map_sizes().map_err(Error::Load)?;
        raise_memlock_limit();
        ensure_tracefs().map_err(|e| Error::Load(format!("{e:#}")))?;
        let offsets = tracefs::read_offsets().map_err(|e| Error::Load(format!("{e:#}")))?;
        let features = Features {
            exit_codes: offsets.task_exit_code != NO_FIELD,
            oom_kills: offsets.mark_victim_pid != NO_FIELD,
        };
        let words = bitmap_words();
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .override_global("PER_CONTAINER", &limits.per_container, true)
            .map_max_entries("TRACKED_PIDS", words)
            .map_max_entries("TRACKED", processes)
            .map_max_entries("COUNTERS", containers)
            .map_max_entries("ADOPTED", containers)
            .map_max_entries("NET_CGROUPS", containers)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                load(
                    "loading the eBPF object (needs root: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)",
                    &e,
                )
            })?;
        let oom = features
            .oom_kills
            .then_some(("oom_mark_victim", "oom", "mark_victim"));
        for (name, category, event) in PROGRAMS.into_iter().chain(oom) {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| load(&format!("loading eBPF program {name}"), &e))?;
            prog.attach(category, event).map_err(|e| {
                load(
                    &format!("attaching {name} to tracepoint {category}/{event}"),
                    &e,
                )
            })?;
        }
        let (name, event) = FORK_PROGRAM;
        let prog: &mut RawTracePoint = program(&mut ebpf, name)?;
        prog.load()
            .map_err(|e| load(&format!("loading eBPF program {name}"), &e))?;
        prog.attach(event)
            .map_err(|e| load(&format!("attaching {name} to raw tracepoint {event}"), &e))?;
        for (name, _) in network::PROGRAMS {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| load(&format!("loading eBPF program {name}"), &e))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| Error::Load(format!("map {name} missing from the eBPF object")))
        };
        let (tracked, bits, counters, adopted, errors, ring, net_cgroups, net_levels) = (
            take("TRACKED")?,
            take("TRACKED_PIDS")?,
            take("COUNTERS")?,
            take("ADOPTED")?,
            take("ERRORS")?,
            take("EVENTS")?,
            take("NET_CGROUPS")?,
            take("NET_LEVELS")?,
        );
        let Map::Array(bits) = bits else {
            return Err(Error::Load("map TRACKED_PIDS is not an array".into()));
        };
        let bits = PidBits::map(bits, words).map_err(|e| load("mapping TRACKED_PIDS", &e))?;
        let tracked = BpfHashMap::try_from(tracked).map_err(|e| load("map TRACKED", &e))?;
        let maps = Maps {
            tracked: TrackedMap::new(tracked, bits),
            counters: BpfHashMap::try_from(counters).map_err(|e| load("map COUNTERS", &e))?,
            adopted_in_kernel: BpfHashMap::try_from(adopted)
                .map_err(|e| load("map ADOPTED", &e))?,
            errors: PerCpuArray::try_from(errors).map_err(|e| load("map ERRORS", &e))?,
            net: NetMaps::new(net_cgroups, net_levels).map_err(|e| load("map NET_*", &e))?,
            attached: Default::default(),
            features,
            adopted: Default::default(),
        };
        let ring = RingBuf::try_from(ring).map_err(|e| load("map EVENTS", &e))?;
        let (events, hurry) =
            EventStream::new(ring).map_err(|e| load("watching the event ring", &e))?;
        // The kernel's BTF is megabytes, read at start by us and by aya: measured 13 MiB more
        // resident at idle without this.
        crate::memory::release_freed();
        let tracker = Tracker {
            maps: parking_lot::Mutex::new(maps),
            procs: parking_lot::Mutex::new(ProcTable::default()),
            ebpf: parking_lot::Mutex::new(ebpf),
            processes: limits.processes,
            containers: limits.containers,
            warned: parking_lot::Mutex::new((0, None)),
            hurry,
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
