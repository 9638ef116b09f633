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

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use apptheus_common::Counters;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray},
};

pub use self::{
    adopt::Tracked,
    error::Error,
    events::EventStream,
    tracefs::{TRACEFS, ensure_tracefs},
};
use self::{
    adopt::{forget, lookup, tracked_under},
    proctable::ProcTable,
};
use crate::pidfd::{Pidfd, Process};

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
}

/// The loaded and attached programs and their maps. Dropping it detaches the programs.
pub struct Tracker {
    maps: Mutex<Maps>,
    /// The host's parent links, for finding descendants (locked apart from the maps: a /proc
    /// walk never holds up a map operation).
    procs: Mutex<ProcTable>,
    // Owns the programs and their links; kept for its Drop.
    _ebpf: Ebpf,
}

impl Tracker {
    fn maps(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves the maps themselves consistent (they live in
        // the kernel), so a poisoned lock is still usable.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn procs(&self) -> MutexGuard<'_, ProcTable> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Track `root` (held by its pidfd since the peer was identified) and all its current
    /// descendants under `key`; from now on the kernel adds every process they fork. Returns
    /// every member found (root first), each held by a pidfd, for the caller to move into the
    /// container's cgroups. Blocking: it scans /proc.
    pub fn register(&self, root: Process, key: u64) -> Result<Tracked, Error> {
        let pid = root.pid();
        if let Some(other) = self.key_of(pid)? {
            return Err(Error::AlreadyTracked { pid, key: other });
        }
        let tracked = self.track(vec![root], key)?;
        if tracked.members.first().map(Process::pid) != Some(pid) {
            forget(&mut self.maps(), key)?;
            return Err(Error::Exited { pid });
        }
        Ok(tracked)
    }

    /// Track again, after a daemon restart, the processes `pids` found in a container's cgroup,
    /// and their descendants, under a new `key`. Processes that exited meanwhile are skipped;
    /// no member means none is left (the key stays registered, with no live process).
    pub fn readopt(&self, pids: &[i32], key: u64) -> Result<Tracked, Error> {
        let mut roots = Vec::new();
        for &pid in pids {
            if let Some(fd) =
                Pidfd::open(pid).map_err(|e| Error::io(format!("pidfd_open({pid})"), e))?
            {
                roots.push(Process::new(pid, fd));
            }
        }
        self.track(roots, key)
    }

    /// Go on with a walk that was cut short: adopt the descendants of `key`'s processes that
    /// are not tracked yet (bounded like the first walk).
    pub fn walk_again(&self, key: u64) -> Result<Tracked, Error> {
        let pids = tracked_under(&self.maps(), key);
        let mut members: Vec<Process> = pids
            .into_iter()
            .filter_map(|pid| self.member(pid as i32, key))
            .collect();
        let mut seen = members.iter().map(Process::pid).collect();
        let complete = self.walk(&mut members, &mut seen, key)?;
        Ok(Tracked { members, complete })
    }

    /// Process `pid` held by a pidfd, if it is a live process tracked under `key` (its entry
    /// goes when it exits, so the pidfd, opened first, holds the member).
    pub fn member(&self, pid: i32, key: u64) -> Option<Process> {
        let fd = Pidfd::open(pid).ok()??;
        let process = Process::new(pid, fd);
        (self.key_of(pid).ok()? == Some(key) && process.alive()).then_some(process)
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
