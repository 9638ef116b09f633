//! The eBPF process-tree tracker: loads the embedded programs, keeps the map of tracked processes,
//! and streams their fork/exec/exit events.
//!
//! Membership is decided in the kernel for every process forked after its parent is tracked;
//! `register` adds the root and walks its descendants that existed before (by the members'
//! children files where the kernel has them, else by the host's parent links), without
//! racing the fork hook: both sides insert with `BPF_NOEXIST`, and whoever inserts counts the
//! process live, so each process is counted once.
mod adopt;
mod batch;
pub(crate) mod btf;
mod children;
mod error;
mod events;
pub(crate) mod format;
mod limits;
mod load;
pub(crate) mod network;
pub(crate) mod proctable;
mod tracefs;
mod tracked;

use parking_lot::{Mutex, MutexGuard};

use foldhash::HashMap;

use apptheus_common::{Counters, LAUNCHER_EXITED, errors};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, IterableMap as _, MapData, MapError, PerCpuArray},
};

pub use self::{
    adopt::Tracked,
    error::Error,
    events::EventStream,
    limits::{Limits, MAX_PROCESSES},
    tracefs::{TRACEFS, ensure_tracefs},
};
use self::{
    adopt::{forget, lookup, tracked_under},
    network::{Attached, NetMaps},
    proctable::ProcTable,
    tracked::TrackedMap,
};
use crate::pidfd::{Pidfd, Process};

/// Listings of /proc for the tracker's parent links on this thread so far (the tests: which
/// way admissions go).
#[cfg(feature = "test-hooks")]
pub use crate::testhook::proc_listings;

/// A container's process counters, as the kernel counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    pub forks: u64,
    pub execs: u64,
    pub exits: u64,
    /// Live processes: adopted at registration plus forked, minus exited.
    pub live: u64,
    /// New processes not tracked: the container was at its process bound (or the map full).
    pub untracked: u64,
    /// How its processes ended (None where the kernel's BTF has no `task_struct.exit_code`).
    pub failed: Option<Failed>,
    /// Processes the OOM killer ended (None where the kernel has no `oom/mark_victim`).
    pub oom_kills: Option<u64>,
    /// The launcher's exit status as a shell reports it (its code, or 128+N for signal N),
    /// once it exited.
    pub exit_code: Option<u32>,
    /// Its sockets' traffic, where it is counted (a cgroup v2 directory).
    pub network: Option<Network>,
}

/// Processes that ended badly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failed {
    /// With a non-zero exit code.
    pub exit_code: u64,
    /// By a signal.
    pub signal: u64,
}

/// A container's sockets' traffic: bytes at the IP layer (headers included), and packets (a
/// segmentation-offload aggregate counts as its segments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Network {
    pub receive_bytes: u64,
    pub receive_packets: u64,
    pub transmit_bytes: u64,
    pub transmit_packets: u64,
}

/// What this kernel lets the programs count (decided at load time).
#[derive(Clone, Copy, Debug, Default)]
struct Features {
    exit_codes: bool,
    oom_kills: bool,
}

/// A wait status (as `task_struct.exit_code` holds it) as a shell reports it.
fn shell_status(raw: u32) -> u32 {
    match raw & 0x7f {
        0 => (raw >> 8) & 0xff,
        signal => 128 + signal,
    }
}

struct Maps {
    tracked: TrackedMap,
    counters: BpfHashMap<MapData, u64, Counters>,
    /// `adopted`'s counts, for the exit hook to tell a container's last exit (it wakes the
    /// event reader for it at once).
    adopted_in_kernel: BpfHashMap<MapData, u64, i64>,
    /// The programs' per-CPU error counts (`apptheus_common::errors`).
    errors: PerCpuArray<MapData, u64>,
    net: NetMaps,
    /// Containers whose traffic is counted.
    attached: HashMap<u64, Attached>,
    features: Features,
    /// Per key, processes that `register` added (the kernel counts only what it added).
    adopted: HashMap<u64, i64>,
}

/// The loaded and attached programs and their maps. Dropping it detaches the programs.
pub struct Tracker {
    maps: Mutex<Maps>,
    /// The host's parent links, for finding descendants (locked apart from the maps: a /proc
    /// walk never holds up a map operation).
    procs: Mutex<ProcTable>,
    /// Owns the programs and their tracepoint links (the network programs' links are in
    /// `Maps::net`).
    ebpf: Mutex<Ebpf>,
    /// The capacity of the map of tracked processes.
    processes: usize,
    /// The capacity of the map of counters.
    containers: usize,
    /// Processes that found that map full, as last logged, and when.
    warned: Mutex<(u64, Option<std::time::Instant>)>,
    /// Wakes the event reader to its busy pace while a tree is adopted.
    hurry: events::Hurry,
}

impl Tracker {
    fn maps(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves the maps themselves consistent (they live in
        // the kernel), so they are used on as they are (parking_lot's locks are not poisoned).
        self.maps.lock()
    }

    fn procs(&self) -> MutexGuard<'_, ProcTable> {
        self.procs.lock()
    }

    fn ebpf(&self) -> MutexGuard<'_, Ebpf> {
        self.ebpf.lock()
    }

    /// Track `root` (held by its pidfd since the peer was identified) and all its current
    /// descendants under `key`; from now on the kernel adds every process they fork, and keeps
    /// the root's exit status (the launcher's). Returns every member found (root first), each
    /// held by a pidfd, for the caller to move into the container's cgroups. Blocking: it scans
    /// /proc.
    pub fn register(&self, root: Process, key: u64) -> Result<Tracked, Error> {
        let pid = root.pid();
        if let Some(other) = self.key_of(pid)? {
            return Err(Error::AlreadyTracked { pid, key: other });
        }
        let tracked = self.track(vec![root], key, Some(pid))?;
        if tracked.members.first().map(Process::pid) != Some(pid) {
            forget(&mut self.maps(), key)?;
            return Err(Error::Exited { pid });
        }
        self.maps().publish_adopted(key);
        Ok(tracked)
    }

    /// Track again, after a daemon restart, the processes `roots` found in a container's
    /// cgroup (held: see `cgroup::ContainerCgroup::hold_procs`), and their descendants, under a
    /// new `key`. No member means none is left (the key stays registered, with no live process).
    pub fn readopt(&self, roots: Vec<Process>, key: u64) -> Result<Tracked, Error> {
        let tracked = self.track(roots, key, None)?;
        self.maps().publish_adopted(key);
        Ok(tracked)
    }

    /// Go on with a walk that was cut short: adopt the descendants of `key`'s processes that
    /// are not tracked yet (bounded like the first walk). `since`: a time after the walk's last
    /// adoptions, so that a listing of /proc begun since serves its first scan (walks that go
    /// on in one pass share one).
    pub fn walk_again(&self, key: u64, since: std::time::Instant) -> Result<Tracked, Error> {
        let pids = tracked_under(&self.maps(), key);
        let mut members: Vec<Process> = pids
            .into_iter()
            .filter_map(|pid| self.member(pid as i32, key))
            .collect();
        let mut seen = members.iter().map(Process::pid).collect();
        self.hurry.now();
        let mut walk = adopt::Walk::new(since, members.len());
        let complete = self.walk(&mut members, &mut seen, key, &mut walk)?;
        self.maps().publish_adopted(key);
        Ok(walk.tracked(members, complete))
    }

    /// Process `pid` held by a pidfd, if it is a live process tracked under `key` (its entry
    /// goes when it exits, so the pidfd, opened first, holds the member).
    pub fn member(&self, pid: i32, key: u64) -> Option<Process> {
        let fd = Pidfd::open(pid).ok()??;
        let process = Process::new(pid, fd);
        (self.key_of(pid).ok()? == Some(key) && process.alive()).then_some(process)
    }

    /// Forget a container: its counters, any of its processes still tracked, its network
    /// programs.
    pub fn unregister(&self, key: u64) -> Result<(), Error> {
        let mut maps = self.maps();
        network::stop(&mut maps, key)?;
        maps.attached.remove(&key);
        let _ = maps.adopted_in_kernel.remove(&key);
        forget(&mut maps, key)
    }

    /// The counters of `key`, or None if it is not registered.
    pub fn counters(&self, key: u64) -> Result<Option<ProcessCounters>, Error> {
        let maps = self.maps();
        let c = match maps.counters.get(&key, 0) {
            Ok(c) => c,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(Error::map("reading container counters", e)),
        };
        Ok(Some(maps.process_counters(key, &c)))
    }

    /// The counters of every registered container, in one batched read of the map (a few
    /// syscalls for any number of containers): what a sampling pass needs.
    pub fn all_counters(&self) -> Result<HashMap<u64, ProcessCounters>, Error> {
        let maps = self.maps();
        let all: Vec<(u64, Counters)> = batch::lookup_all(maps.counters.map(), self.containers)
            .map_err(|e| Error::io("reading every container's counters", e))?;
        Ok(all
            .into_iter()
            .map(|(key, c)| (key, maps.process_counters(key, &c)))
            .collect())
    }
}

impl Maps {
    /// Hand the kernel the number of processes adopted for `key`. Only a wakeup depends on
    /// it, so a failure is not one of the registration.
    fn publish_adopted(&mut self, key: u64) {
        let adopted = self.adopted.get(&key).copied().unwrap_or(0);
        if let Err(e) = self.adopted_in_kernel.insert(key, adopted, 0) {
            tracing::debug!(key, error = %e, "cannot hand the kernel a container's adopted count");
        }
    }

    /// What the kernel counted for `key` (`c`), with userspace's part (adopted processes,
    /// what this kernel lets the programs count, whether its traffic is counted).
    fn process_counters(&self, key: u64, c: &Counters) -> ProcessCounters {
        let maps = self;
        let adopted = maps.adopted.get(&key).copied().unwrap_or(0);
        let f = maps.features;
        ProcessCounters {
            forks: c.forks,
            execs: c.execs,
            exits: c.exits,
            live: (c.live + adopted).max(0) as u64,
            untracked: c.untracked,
            failed: f.exit_codes.then_some(Failed {
                exit_code: c.failed_exit_code,
                signal: c.failed_signal,
            }),
            oom_kills: f.oom_kills.then_some(c.oom_kills),
            exit_code: (f.exit_codes && c.launcher_exit & LAUNCHER_EXITED != 0)
                .then(|| shell_status(c.launcher_exit as u32)),
            network: maps.attached.contains_key(&key).then_some(Network {
                receive_bytes: c.rx_bytes,
                receive_packets: c.rx_packets,
                transmit_bytes: c.tx_bytes,
                transmit_packets: c.tx_packets,
            }),
        }
    }
}

impl Tracker {
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
        self.error_count(errors::EVENTS_LOST)
    }

    /// Log, at most once a minute, how many new processes found the map of tracked processes
    /// full since the last such line (the programs count them instead of logging each: a fork
    /// storm must not become a log storm). Called once per sampling pass.
    pub fn warn_if_full(&self) {
        let Ok(full) = self.error_count(errors::TRACKED_FULL) else {
            return;
        };
        let mut warned = self.warned.lock();
        let (seen, at) = *warned;
        if full > seen && at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
            tracing::warn!(
                untracked = full - seen,
                capacity = self.processes,
                "new processes were not tracked: the map of tracked processes is full (tracker::Limits::processes)"
            );
            *warned = (full, Some(std::time::Instant::now()));
        }
    }

    /// One of the programs' error counts, summed over the CPUs.
    fn error_count(&self, slot: u32) -> Result<u64, Error> {
        let values = self
            .maps()
            .errors
            .get(&slot, 0)
            .map_err(|e| Error::map("reading the programs' error counters", e))?;
        Ok(values.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wait_statuses_read_as_a_shell_reports_them() {
        assert_eq!(super::shell_status(0), 0);
        assert_eq!(super::shell_status(3 << 8), 3);
        assert_eq!(super::shell_status(15), 143);
        assert_eq!(
            super::shell_status(9 | 0x80),
            137,
            "a core dump adds no status"
        );
    }
}
