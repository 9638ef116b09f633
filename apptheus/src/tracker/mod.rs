//! The eBPF process-tree tracker: loads the embedded programs, keeps the map of tracked processes,
//! and streams their fork/exec/exit events.
//!
//! Membership is decided in the kernel for every process forked after its parent is tracked;
//! `register` adds the root and walks /proc for the descendants that existed before, without
//! racing the fork hook: both sides insert with `BPF_NOEXIST`, and whoever inserts counts the
//! process live, so each process is counted once.
mod adopt;
mod error;
mod events;
pub mod format;
mod load;
pub mod proctable;
mod tracefs;
mod tracked;

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use apptheus_common::{Counters, errors};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
};

use self::{
    adopt::{forget, lookup, track, tracked_under},
    proctable::ProcTable,
    tracked::TrackedMap,
};
pub use self::{
    error::Error,
    events::EventStream,
    tracefs::{TRACEFS, ensure_tracefs},
};

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
    tracked: TrackedMap,
    counters: BpfHashMap<MapData, u64, Counters>,
    /// The programs' per-CPU error counts (`apptheus_common::errors`).
    errors: PerCpuArray<MapData, u64>,
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
        self.error_count(errors::EVENTS_LOST)
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
