//! The eBPF process-tree tracker: loads the embedded programs, keeps the map of tracked processes,
//! and streams their fork/exec/exit events.
//!
//! Membership is decided in the kernel for every process forked after its parent is tracked;
//! `register` adds the root and walks /proc for the descendants that existed before, without
//! racing the fork hook: both sides insert with `BPF_NOEXIST`, and whoever inserts counts the
//! process live, so each process is counted once.
mod error;
mod events;
pub mod format;
pub mod proctable;
mod tracefs;

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
};

use apptheus_common::Counters;
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::TracePoint,
};

use self::proctable::ProcTable;
pub use self::{
    error::Error,
    events::EventStream,
    tracefs::{TRACEFS, ensure_tracefs},
};
use crate::pidfd::Pidfd;

/// `BPF_NOEXIST` from `<linux/bpf.h>`.
const BPF_NOEXIST: u64 = 1;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apptheus"));

/// The programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str, &str); 4] = [
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

/// A container's process counters, as the kernel counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    pub forks: u64,
    pub execs: u64,
    pub exits: u64,
    /// Live processes: adopted at registration plus forked, minus exited.
    pub live: u64,
}

struct Maps {
    tracked: BpfHashMap<MapData, u32, u64>,
    counters: BpfHashMap<MapData, u64, Counters>,
    lost: PerCpuArray<MapData, u64>,
    /// Per key, processes that `register` added (the kernel counts only what it added).
    adopted: HashMap<u64, i64>,
    /// The host's parent links, for finding descendants.
    procs: ProcTable,
}

/// The loaded and attached programs and their maps. Dropping it detaches the programs.
pub struct Tracker {
    maps: Mutex<Maps>,
    // Owns the programs and their links; kept for its Drop.
    _ebpf: Ebpf,
}

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
            procs: ProcTable::default(),
        };
        let ring = RingBuf::try_from(ring).map_err(|e| load("map EVENTS", &e))?;
        let events =
            EventStream::new(ring, logger).map_err(|e| load("watching the event ring", &e))?;
        let tracker = Tracker {
            maps: Mutex::new(maps),
            _ebpf: ebpf,
        };
        Ok((tracker, events))
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves the maps themselves consistent (they live in
        // the kernel), so a poisoned lock is still usable.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Track `root` and all its current descendants under `key`; from now on the kernel adds
    /// every process they fork. Returns every member found (root first), for the caller to move
    /// into the container's cgroups. Blocking: it scans /proc.
    pub fn register(&self, root: i32, key: u64) -> Result<Vec<i32>, Error> {
        let mut maps = self.maps();
        if let Some(other) = lookup(&maps.tracked, root as u32)? {
            return Err(Error::AlreadyTracked {
                pid: root,
                key: other,
            });
        }
        let members = track(&mut maps, &[root], key)?;
        if members.first() != Some(&root) {
            forget(&mut maps, key)?;
            return Err(Error::Exited { pid: root });
        }
        Ok(members)
    }

    /// Track again, after a daemon restart, the processes `pids` found in a container's cgroup,
    /// and their descendants, under a new `key`. Processes that exited meanwhile are skipped;
    /// an empty result means none is left (the key stays registered, with no live process).
    pub fn readopt(&self, pids: &[i32], key: u64) -> Result<Vec<i32>, Error> {
        track(&mut self.maps(), pids, key)
    }

    /// Forget a container: its counters and any of its processes still tracked.
    pub fn unregister(&self, key: u64) -> Result<(), Error> {
        forget(&mut self.maps(), key)
    }

    /// The counters of `key`, or None if it is not registered.
    pub fn counters(&self, key: u64) -> Result<Option<ProcessCounters>, Error> {
        let maps = self.maps();
        let c = match maps.counters.get(&key, 0) {
            Ok(c) => c,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(Error::map("reading container counters", e)),
        };
        let adopted = maps.adopted.get(&key).copied().unwrap_or(0);
        Ok(Some(ProcessCounters {
            forks: c.forks,
            execs: c.execs,
            exits: c.exits,
            live: (c.live + adopted).max(0) as u64,
        }))
    }

    /// The container key `pid` is tracked under.
    pub fn key_of(&self, pid: i32) -> Result<Option<u64>, Error> {
        lookup(&self.maps().tracked, pid as u32)
    }

    /// The processes tracked under `key` (a walk of the whole map: not for hot paths).
    pub fn pids(&self, key: u64) -> Vec<i32> {
        tracked_under(&self.maps(), key)
            .into_iter()
            .map(|p| p as i32)
            .collect()
    }

    /// Events the programs could not put into the ring buffer (it was full).
    pub fn lost_events(&self) -> Result<u64, Error> {
        let values = self
            .maps()
            .lost
            .get(&0, 0)
            .map_err(|e| Error::map("reading the lost-events counter", e))?;
        Ok(values.iter().sum())
    }
}

/// Register `key`, track each of `roots` that still lives, then their descendants. Returns the
/// members found (the live roots first).
fn track(maps: &mut Maps, roots: &[i32], key: u64) -> Result<Vec<i32>, Error> {
    maps.counters
        .insert(key, Counters::default(), 0)
        .map_err(|e| Error::map(format!("creating counters for container key {key}"), e))?;
    maps.adopted.insert(key, 0);
    let mut members = Vec::new();
    let mut seen = HashSet::new();
    for &pid in roots {
        match adopt(maps, pid, key) {
            Ok(true) if seen.insert(pid) => members.push(pid),
            Ok(_) => {}
            Err(e) => {
                forget(maps, key)?;
                return Err(e);
            }
        }
    }
    if members.is_empty() {
        return Ok(members);
    }
    // Repeat until a whole scan adopts nothing: a process forked by a descendant before that
    // descendant was tracked only shows in a later scan; once a scan adds nothing, every later
    // fork comes from a tracked parent and the kernel takes it.
    loop {
        let mut adopted_any = false;
        maps.procs
            .refresh()
            .map_err(|e| Error::io("listing /proc", e))?;
        for pid in maps.procs.descendants(&members) {
            match lookup(&maps.tracked, pid as u32)? {
                // Inside another container (a nested launcher's): it stays there.
                Some(k) if k != key => continue,
                Some(_) => {}
                None if adopt(maps, pid, key)? => adopted_any = true,
                None => continue,
            }
            if seen.insert(pid) {
                members.push(pid);
            }
        }
        if !adopted_any {
            break;
        }
    }
    Ok(members)
}

/// Forget `key`: its counters and any of its processes still tracked.
fn forget(maps: &mut Maps, key: u64) -> Result<(), Error> {
    for pid in tracked_under(maps, key) {
        ignore_missing(maps.tracked.remove(&pid))?;
    }
    ignore_missing(maps.counters.remove(&key))?;
    maps.adopted.remove(&key);
    Ok(())
}

/// The pids tracked under `key`: a walk of the whole map.
fn tracked_under(maps: &Maps, key: u64) -> Vec<u32> {
    maps.tracked
        .iter()
        .filter_map(|kv| kv.ok())
        .filter(|&(_, k)| k == key)
        .map(|(pid, _)| pid)
        .collect()
}

/// Add `pid` to the tracked map under `key` if it is still the live process it was. Returns
/// whether it is tracked now (by us or, in a race, by the fork hook).
fn adopt(maps: &mut Maps, pid: i32, key: u64) -> Result<bool, Error> {
    // Hold the process with a pidfd, so a pid reused after our insert cannot fool the check.
    let Some(pidfd) = Pidfd::open(pid).map_err(|e| Error::io(format!("pidfd_open({pid})"), e))?
    else {
        return Ok(false);
    };
    match maps.tracked.insert(pid as u32, key, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if is_errno(&e, libc::EEXIST) => return Ok(true),
        Err(e) => return Err(Error::map(format!("tracking pid {pid}"), e)),
    }
    *maps.adopted.entry(key).or_default() += 1;
    if pidfd
        .has_exited()
        .map_err(|e| Error::io("poll(pidfd)", e))?
    {
        // It exited around our insert. If its entry is still there, the exit hook ran before we
        // added it and will not run again: take it back. If it is gone, the hook counted the exit.
        if maps.tracked.remove(&(pid as u32)).is_ok() {
            *maps.adopted.entry(key).or_default() -= 1;
            return Ok(false);
        }
    }
    Ok(true)
}

fn lookup(map: &BpfHashMap<MapData, u32, u64>, pid: u32) -> Result<Option<u64>, Error> {
    match map.get(&pid, 0) {
        Ok(k) => Ok(Some(k)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(Error::map("looking up a tracked pid", e)),
    }
}

fn is_errno(e: &MapError, errno: i32) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(errno))
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), Error> {
    match r {
        Err(e) if !matches!(e, MapError::KeyNotFound) && !is_errno(&e, libc::ENOENT) => {
            Err(Error::map("removing a map entry", e))
        }
        _ => Ok(()),
    }
}

fn raise_memlock_limit() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {e}");
    }
}
