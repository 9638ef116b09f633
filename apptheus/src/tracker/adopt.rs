//! Tracking a process tree from userspace: the root, then the descendants that existed before,
//! without racing the fork hook (both sides insert with `BPF_NOEXIST`; whoever inserts counts
//! the process live).
//!
//! The descendants are found scan by scan: where the kernel has children files, by reading the
//! members' (`children`: the cost of a scan is the tree's, not the host's); else, or when such a
//! reading may have missed a child, by the host's parent links (`proctable`: a listing of
//! /proc). Every process adopted is held by a pidfd from before its insert to after the caller
//! moved it, and is adopted only if it is still the process the scan found (from a listing: the
//! inode of its /proc directory; from a children file: once held, alive with the member, itself
//! alive, as its parent), so a pid reused meanwhile is never adopted, nor later moved. The
//! tracker's locks are taken per operation, never across a /proc walk, and the walk is bounded
//! in scans and time: a tree that keeps forking faster than it can be walked cannot stall the
//! daemon (its later forks are the kernel's to follow; the caller is told the walk was cut
//! short).
use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use apptheus_common::Counters;
use aya::maps::MapError;

use super::{Error, Maps, Tracker, children, proctable, tracked::TrackedMap};
use crate::{
    descriptors::Lease,
    pidfd::{Pidfd, Process},
};

/// `BPF_NOEXIST` from `<linux/bpf.h>`.
const BPF_NOEXIST: u64 = 1;

/// Scans of /proc for one walk, at most: a tree that settles needs two or three.
const MAX_SCANS: usize = 16;
/// Time for one walk, at most.
const MAX_WALK: Duration = Duration::from_millis(250);
/// Processes one walk holds (a pidfd each until the caller moved them), at most: a launcher
/// with a tree of many thousands is adopted over several turns, not with thousands of
/// descriptors at once (16 admissions may walk at a time).
const MAX_HELD: usize = 2048;

/// The processes a registration tracked.
#[derive(Debug)]
pub struct Tracked {
    /// The live roots first, then their descendants; each held until the caller drops it.
    pub members: Vec<Process>,
    /// False when the walk stopped at its bound with processes possibly left to adopt.
    pub complete: bool,
    /// The place in the descriptor budget of the pidfds the walk added to `members`.
    pub pidfds: Lease,
}

/// What one walk carries from scan to scan.
pub(super) struct Walk {
    /// The first listing of /proc may be one begun at or after this (later ones: after the
    /// scan began).
    since: Instant,
    /// The members it began with, whose pidfds are not its to count.
    roots: usize,
    pidfds: Lease,
}

impl Walk {
    pub(super) fn new(since: Instant, roots: usize) -> Walk {
        Walk {
            since,
            roots,
            pidfds: Lease::default(),
        }
    }

    /// Room for one more held process within the walk's bound and the descriptor budget.
    fn room(&mut self, members: &[Process]) -> bool {
        members.len() < MAX_HELD && self.pidfds.take()
    }

    /// Count exactly the members it added (a candidate it made room for may not be one).
    fn settle(&mut self, members: &[Process]) {
        self.pidfds.keep(members.len().saturating_sub(self.roots));
    }

    pub(super) fn tracked(mut self, members: Vec<Process>, complete: bool) -> Tracked {
        self.settle(&members);
        Tracked {
            members,
            complete,
            pidfds: self.pidfds,
        }
    }
}

impl Tracker {
    /// Create `key`'s counters and track each of `roots` that still lives, then their
    /// descendants. The kernel keeps `launcher`'s exit status.
    pub(super) fn track(
        &self,
        roots: Vec<Process>,
        key: u64,
        launcher: Option<i32>,
    ) -> Result<Tracked, Error> {
        {
            let mut maps = self.maps();
            let counters = Counters {
                launcher: launcher.map_or(0, |p| p as u32),
                ..Counters::default()
            };
            maps.counters
                .insert(key, counters, 0)
                .map_err(|e| Error::map(format!("creating counters for container key {key}"), e))?;
            maps.adopted.insert(key, 0);
        }
        // Forks from now until the tree is moved may need moving: read them at once.
        self.hurry.now();
        let mut members = Vec::new();
        let mut seen = HashSet::new();
        for root in roots {
            match self.adopt(&root, key) {
                Ok(true) if seen.insert(root.pid()) => members.push(root),
                Ok(_) => {}
                Err(e) => {
                    forget(&mut self.maps(), key)?;
                    return Err(e);
                }
            }
        }
        let mut walk = Walk::new(Instant::now(), members.len());
        if members.is_empty() {
            return Ok(walk.tracked(members, true));
        }
        let complete = self.walk(&mut members, &mut seen, key, &mut walk)?;
        Ok(walk.tracked(members, complete))
    }

    /// Adopt the descendants of `members` until a scan adopts nothing, or the bound. A process
    /// forked by a descendant before that descendant was tracked only shows in a later scan;
    /// once a scan adds nothing, every later fork comes from a tracked parent and the kernel
    /// takes it. Returns whether it got there.
    pub(super) fn walk(
        &self,
        members: &mut Vec<Process>,
        seen: &mut HashSet<i32>,
        key: u64,
        walk: &mut Walk,
    ) -> Result<bool, Error> {
        let start = Instant::now();
        let children = children::available();
        // A scan of the children files that may have missed a child is followed by one of the
        // listing, which cannot.
        let mut doubt = false;
        for _ in 0..MAX_SCANS {
            if start.elapsed() > MAX_WALK {
                return Ok(false);
            }
            let scan = if children && !doubt {
                self.scan_children(members, seen, key, start, walk)?
            } else {
                self.scan_listing(members, seen, key, start, walk)?
            };
            walk.settle(members);
            doubt = false;
            match scan {
                Scan::Settled => return Ok(true),
                Scan::Adopted => {}
                Scan::Doubt => doubt = true,
                Scan::Bound => return Ok(false),
            }
        }
        Ok(false)
    }

    /// One scan by the host's parent links: a listing of /proc (shared with other
    /// registrations, see `ProcTable`).
    fn scan_listing(
        &self,
        members: &mut Vec<Process>,
        seen: &mut HashSet<i32>,
        key: u64,
        start: Instant,
        walk: &mut Walk,
    ) -> Result<Scan, Error> {
        let roots: Vec<i32> = members.iter().map(Process::pid).collect();
        // Every process forked before now by a member not tracked then is in a listing begun
        // from now on (another registration's will do); a walk's first scan needs one begun
        // after its members' last adoptions (`since`).
        let now = Instant::now();
        let need = std::mem::replace(&mut walk.since, now).min(now);
        let candidates = {
            let mut procs = self.procs();
            procs
                .refresh_since(need)
                .map_err(|e| Error::io("listing /proc", e))?;
            procs
                .descendants(&roots)
                .into_iter()
                .map(|pid| (pid, procs.ino_of(pid)))
                .collect::<Vec<_>>()
        };
        let mut adopted_any = false;
        for (pid, ino) in candidates {
            if seen.contains(&pid) {
                continue;
            }
            // Within a scan too: a tree of many thousands costs a pidfd, a stat and a map
            // insert each; what is left is adopted at the walk's next turn.
            if start.elapsed() > MAX_WALK || !walk.room(members) {
                return Ok(Scan::Bound);
            }
            let Some(process) = open_as_found(pid, ino)? else {
                continue;
            };
            adopted_any |= self.take(process, members, seen, key)?;
        }
        Ok(if adopted_any {
            Scan::Adopted
        } else {
            Scan::Settled
        })
    }

    /// One scan by the members' children files: no listing of the host. It reads the members
    /// it began with, so it goes one generation down: a chain whose every link forks the next
    /// before it can be adopted is followed a link per scan, as a listing follows it, not chased
    /// for the whole walk with a pidfd held for each link.
    fn scan_children(
        &self,
        members: &mut Vec<Process>,
        seen: &mut HashSet<i32>,
        key: u64,
        start: Instant,
        walk: &mut Walk,
    ) -> Result<Scan, Error> {
        let mut adopted_any = false;
        let mut doubt = false;
        let mut listed = Vec::new();
        let mut buf = [0u8; 1024];
        for at in 0..members.len() {
            if start.elapsed() > MAX_WALK {
                return Ok(Scan::Bound);
            }
            let parent = members[at].pid();
            listed.clear();
            let whole = children::read(parent, MAX_HELD, &mut listed);
            // Read while the pid may have named another process: counts for nothing (a member
            // that exited has no children left to adopt: they went to a reaper).
            if !members[at].alive() {
                continue;
            }
            match whole {
                Ok(true) => {}
                Ok(false) | Err(_) => doubt = true,
            }
            for &pid in &listed {
                if start.elapsed() > MAX_WALK || !walk.room(members) {
                    return Ok(Scan::Bound);
                }
                let fd = match Pidfd::open(pid) {
                    Ok(Some(fd)) => fd,
                    // Reaped since it was listed (or being reaped: its pid outlives it for a
                    // moment): the kernel may have skipped a sibling.
                    Ok(None) => {
                        doubt = true;
                        continue;
                    }
                    Err(e) => return Err(Error::io(format!("pidfd_open({pid})"), e)),
                };
                if seen.contains(&pid) {
                    continue;
                }
                match child_of(Process::new(pid, fd), &members[at], &mut buf) {
                    Child::Held(process) => {
                        adopted_any |= self.take(process, members, seen, key)?;
                    }
                    Child::Exited => {}
                    // The pid names another process now: the one listed was reaped.
                    Child::Other => doubt = true,
                }
            }
        }
        Ok(if doubt {
            Scan::Doubt
        } else if adopted_any {
            Scan::Adopted
        } else {
            Scan::Settled
        })
    }

    /// Make `process` (held, found below a member) a member, unless it is another container's
    /// or exited. Returns whether this walk adopted it.
    fn take(
        &self,
        process: Process,
        members: &mut Vec<Process>,
        seen: &mut HashSet<i32>,
        key: u64,
    ) -> Result<bool, Error> {
        let pid = process.pid();
        let tracked_as = lookup(&self.maps().tracked, pid as u32)?;
        let adopted = match tracked_as {
            // Inside another container (a nested launcher's): it stays there.
            Some(k) if k != key => return Ok(false),
            // The fork hook took it: a member already.
            Some(_) => false,
            None if self.adopt(&process, key)? => true,
            None => return Ok(false),
        };
        seen.insert(pid);
        members.push(process);
        Ok(adopted)
    }

    /// Add `process` to the tracked map under `key` if it still lives. Returns whether it is
    /// tracked now (by us or, in a race, by the fork hook).
    fn adopt(&self, process: &Process, key: u64) -> Result<bool, Error> {
        let pid = process.pid();
        let mut maps = self.maps();
        match maps.tracked.insert(pid as u32, key, BPF_NOEXIST) {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => return Ok(true),
            Err(e) => return Err(Error::map(format!("tracking pid {pid}"), e)),
        }
        *maps.adopted.entry(key).or_default() += 1;
        // Exiting already: its pidfd turns readable only at the end of exit(), well after the
        // exit hook ran, so `alive()` alone misses a process whose hook ran before our insert
        // and that has not finished exiting (seen once in a 100,000-container soak: a
        // container counted one live process for good). The flag is read while the pidfd
        // shows the process unreaped, so it is this process's.
        if !process.alive() || (exiting(pid) && process.alive()) {
            // It exited around our insert. If its entry is still there, the exit hook ran before
            // we added it and will not run again: take it back. If it is gone, the hook counted
            // the exit.
            if maps.tracked.remove(&(pid as u32)).is_ok() {
                *maps.adopted.entry(key).or_default() -= 1;
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether `pid`'s leader has begun to exit (PF_EXITING in the flags of /proc/<pid>/stat).
fn exiting(pid: i32) -> bool {
    /// PF_EXITING, <linux/sched.h>.
    const PF_EXITING: u64 = 0x4;
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The 9th field, the 7th after the command's closing parenthesis.
        stat.rfind(')')
            .and_then(|at| stat[at + 1..].split_whitespace().nth(6))
            .and_then(|f| f.parse::<u64>().ok())
            .is_some_and(|flags| flags & PF_EXITING != 0)
    })
}

/// What one scan did.
enum Scan {
    /// Adopted nothing, and missed nothing: the walk is done.
    Settled,
    /// Adopted some: their children may be left.
    Adopted,
    /// A child may have been missed (see `children`).
    Doubt,
    /// Stopped at the walk's bound.
    Bound,
}

/// A pid a member's children file listed, once held.
enum Child {
    /// Still the member's child.
    Held(Process),
    /// It exited (never adopted).
    Exited,
    /// The pid names another process now.
    Other,
}

/// `process` (held by a pidfd opened after `parent`'s children file listed its pid) if it is
/// still `parent`'s child: its parent pid is read, then it is checked to be alive (so the pid
/// read was its own, not a reuse's), then `parent` is (so the parent pid was `parent`'s).
fn child_of(process: Process, parent: &Process, buf: &mut [u8]) -> Child {
    let ppid = proctable::read_ppid(process.pid(), buf);
    if !process.alive() {
        return Child::Exited;
    }
    if ppid == Some(parent.pid()) && parent.alive() {
        Child::Held(process)
    } else {
        Child::Other
    }
}

/// A pidfd of `pid`, if it is still the process the walk found there (`ino`, its /proc
/// directory's inode then): the pidfd is opened first, so if the inode still matches after, the
/// pidfd holds that process.
fn open_as_found(pid: i32, ino: Option<u64>) -> Result<Option<Process>, Error> {
    let Some(fd) = Pidfd::open(pid).map_err(|e| Error::io(format!("pidfd_open({pid})"), e))? else {
        return Ok(None);
    };
    let now = std::fs::metadata(format!("/proc/{pid}"))
        .map(|m| m.ino())
        .ok();
    Ok((ino.is_some() && now == ino).then(|| Process::new(pid, fd)))
}

/// Forget `key`: its counters and any of its processes still tracked.
pub(super) fn forget(maps: &mut Maps, key: u64) -> Result<(), Error> {
    for pid in tracked_under(maps, key) {
        ignore_missing(maps.tracked.remove(&pid))?;
    }
    ignore_missing(maps.counters.remove(&key))?;
    maps.adopted.remove(&key);
    Ok(())
}

/// The pids tracked under `key`: a walk of the whole map.
pub(super) fn tracked_under(maps: &Maps, key: u64) -> Vec<u32> {
    maps.tracked
        .iter()
        .filter_map(|kv| kv.ok())
        .filter(|&(_, k)| k == key)
        .map(|(pid, _)| pid)
        .collect()
}

pub(super) fn lookup(map: &TrackedMap, pid: u32) -> Result<Option<u64>, Error> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_running_process_is_not_exiting() {
        assert!(!super::exiting(std::process::id() as i32));
        assert!(!super::exiting(i32::MAX));
    }
}
