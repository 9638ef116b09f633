//! Tracking a process tree from userspace: the root, then the descendants that existed before,
//! without racing the fork hook (both sides insert with `BPF_NOEXIST`; whoever inserts counts
//! the process live).
use std::collections::HashSet;

use apptheus_common::Counters;
use aya::maps::MapError;

use super::{Error, Maps, tracked::TrackedMap};
use crate::pidfd::Pidfd;

/// `BPF_NOEXIST` from `<linux/bpf.h>`.
const BPF_NOEXIST: u64 = 1;

/// Register `key`, track each of `roots` that still lives, then their descendants. Returns the
/// members found (the live roots first). The kernel keeps `launcher`'s exit status.
pub(super) fn track(
    maps: &mut Maps,
    roots: &[i32],
    key: u64,
    launcher: Option<i32>,
) -> Result<Vec<i32>, Error> {
    let counters = Counters {
        launcher: launcher.map_or(0, |p| p as u32),
        ..Counters::default()
    };
    maps.counters
        .insert(key, counters, 0)
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
