//! Network traffic per container, which no cgroup file gives: the `cgroup_skb` programs,
//! attached once to the root of the unified (v2) tree, count the bytes and packets of every
//! socket made in a counted container's directory or below it, whatever network namespace the
//! socket is in (the host's, a private one, loopback included), into the container's
//! `Counters`.
//!
//! Attached once, not per container: two links per container were two descriptors each, and
//! at a few thousand containers the descriptor limit ran out. A container is counted by its
//! directory's cgroup id in `NET_CGROUPS`, and `NET_LEVELS` tells the programs at which depths
//! such directories exist, so a socket's ancestors are looked up at those depths only.
//! Sockets made before the process entered the container's cgroup stay with the cgroup they
//! were made in. Two containers in one directory (two launchers in one Slurm task's cgroup):
//! the directory counts for the newer.
//!
//! A container stops being counted once its final values are taken (when its directory is
//! released); in a directory that is not the daemon's (the launcher's own cgroup, taken as it
//! is), as soon as the container ends, so that the directory's later sockets are not its.
use std::{os::unix::fs::MetadataExt as _, path::Path};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, cgroup_skb::CgroupSkbLink},
};

use apptheus_common::NET_MAX_LEVEL;

use super::{Error, Maps, Tracker};
use crate::cgroup::ContainerCgroup;

/// The programs' maps, the links that attach them, and which levels hold counted directories.
pub(super) struct NetMaps {
    cgroups: BpfHashMap<MapData, u64, u64>,
    levels: Array<MapData, u64>,
    /// Counted directories at each level (`NET_LEVELS`' bits are the non-zero ones).
    at_level: [u32; NET_MAX_LEVEL as usize + 1],
    /// The programs' links at the unified tree's root; empty while traffic is not counted.
    links: Vec<CgroupSkbLink>,
}

impl NetMaps {
    pub(super) fn new(cgroups: Map, levels: Map) -> Result<NetMaps, MapError> {
        Ok(NetMaps {
            cgroups: BpfHashMap::try_from(cgroups)?,
            levels: Array::try_from(levels)?,
            at_level: [0; NET_MAX_LEVEL as usize + 1],
            links: Vec::new(),
        })
    }

    fn mask(&self) -> u64 {
        self.at_level
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .fold(0, |m, (level, _)| m | 1 << level)
    }

    fn write_mask(&mut self) -> Result<(), Error> {
        let mask = self.mask();
        self.levels
            .set(0, mask, 0)
            .map_err(|e| Error::map("writing NET_LEVELS", e))
    }
}

/// A container whose traffic is (or was) counted: its counters stay shown once it stops.
pub(super) struct Attached {
    /// Its directory's cgroup id and level while `NET_CGROUPS` names it.
    counting: Option<(u64, usize)>,
    /// The directory is the launcher's own (not the daemon's).
    adopted: bool,
}

/// The two programs by name, with how each attaches.
pub(super) const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    ("net_ingress", CgroupSkbAttachType::Ingress),
    ("net_egress", CgroupSkbAttachType::Egress),
];

impl Tracker {
    /// Attach the network programs to `root`, the unified tree's mount point, for good (two
    /// descriptors, whatever the number of containers). Blocking (a few syscalls).
    pub fn count_network_below(&self, root: &Path) -> Result<(), Error> {
        let file = std::fs::File::open(root)
            .map_err(|e| Error::io(format!("opening {}", root.display()), e))?;
        let mut links = Vec::new();
        {
            let mut ebpf = self.ebpf();
            for (name, attach_type) in PROGRAMS {
                let prog: &mut CgroupSkb = ebpf
                    .program_mut(name)
                    .ok_or_else(|| Error::Load(format!("program {name} missing")))?
                    .try_into()
                    .map_err(|e| Error::Load(format!("program {name}: {e}")))?;
                let attach = |prog: &mut CgroupSkb| {
                    // A bpf_link (5.7+, so every field kernel) runs beside the cgroup's other
                    // programs (systemd's IP accounting) whatever the mode, and the kernel
                    // refuses any mode flag with a link: so the default, flag-less mode.
                    let id = prog.attach(&file, attach_type, CgroupAttachMode::Single)?;
                    prog.take_link(id)
                };
                let link = attach(prog).map_err(|e| {
                    let cause = std::error::Error::source(&e)
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    Error::Load(format!(
                        "attaching {name} to {}: {e}{cause}",
                        root.display()
                    ))
                })?;
                links.push(link);
            }
        }
        self.maps().net.links = links;
        Ok(())
    }

    /// Count the network traffic of container `key` from now on: name its directory in the
    /// unified tree to the programs. A container without one (no cgroup v2 mounted), or while
    /// the programs are not attached, is not counted. Blocking (a few syscalls).
    pub fn attach_network(&self, key: u64, cgroup: &ContainerCgroup) -> Result<bool, Error> {
        let Some(unified) = cgroup.unified_dir() else {
            return Ok(false);
        };
        if unified.level > NET_MAX_LEVEL as usize {
            return Ok(false);
        }
        // A cgroup's id is its directory's inode number in cgroupfs.
        let id = std::fs::symlink_metadata(unified.dir)
            .map_err(|e| Error::io(format!("reading {}", unified.dir.display()), e))?
            .ino();
        let mut maps = self.maps();
        if maps.net.links.is_empty() {
            return Ok(false);
        }
        stop(&mut maps, key)?;
        maps.net
            .cgroups
            .insert(id, key, 0)
            .map_err(|e| Error::map(format!("naming {}'s container", unified.dir.display()), e))?;
        maps.net.at_level[unified.level] += 1;
        maps.attached.insert(
            key,
            Attached {
                counting: Some((id, unified.level)),
                adopted: unified.adopted,
            },
        );
        if maps.net.at_level[unified.level] == 1 {
            maps.net.write_mask()?;
        }
        Ok(true)
    }

    /// The container `key` ended: stop counting a directory that is not ours. In its own
    /// directory the count goes on until it is released: processes it had past its process
    /// bound may still live there.
    pub fn container_ended(&self, key: u64) {
        let mut maps = self.maps();
        if maps.attached.get(&key).is_some_and(|a| a.adopted) {
            log_failure(key, stop(&mut maps, key));
        }
    }

    /// The container `key`'s final values are taken: stop counting it anywhere (the retained
    /// container keeps its counters).
    pub fn container_released(&self, key: u64) {
        log_failure(key, stop(&mut self.maps(), key));
    }
}

/// Stop counting `key`'s directory, if it is counted.
pub(super) fn stop(maps: &mut Maps, key: u64) -> Result<(), Error> {
    let Some((id, level)) = maps.attached.get_mut(&key).and_then(|a| a.counting.take()) else {
        return Ok(());
    };
    // A newer container in the same directory took the entry over: it stays.
    if maps.net.cgroups.get(&id, 0).ok() == Some(key) {
        match maps.net.cgroups.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::map("removing a directory from NET_CGROUPS", e)),
        }
    }
    maps.net.at_level[level] -= 1;
    if maps.net.at_level[level] == 0 {
        maps.net.write_mask()?;
    }
    Ok(())
}

fn log_failure(key: u64, r: Result<(), Error>) {
    if let Err(e) = r {
        tracing::warn!(key, error = %e, "cannot stop counting a container's network traffic");
    }
}
