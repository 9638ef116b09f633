//! Network traffic per container, which no cgroup file gives: the `cgroup_skb` programs,
//! attached to the container's directory in the unified (v2) hierarchy, count the bytes and
//! packets of every socket created in it or below it, whatever network namespace the socket
//! is in (the host's, a private one, loopback included), into the container's `Counters`.
//!
//! Each attachment gets its own cgroup storage, where the container's key is written right
//! after attaching: the programs find the container from the cgroup they are attached to, not
//! from the socket's own cgroup (which may be a child of the container's). Sockets made before
//! the process entered the container's cgroup stay with the cgroup they were made in.
//!
//! A container's programs are detached once its final values are taken (when its directory is
//! released); in a directory that is not the daemon's (the launcher's own cgroup, taken as it
//! is: a Slurm task cgroup), as soon as the container ends, so that nothing of ours outlives it
//! there.
#![expect(
    deprecated,
    reason = "BPF_MAP_TYPE_CGRP_STORAGE, the storage's successor, needs 6.2; the field kernels start at 5.10"
)]
use std::os::unix::fs::MetadataExt as _;

use aya::{
    maps::{CgroupStorage, CgroupStorageKey, Map, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, cgroup_skb::CgroupSkbLink},
};

use super::{Error, Tracker};
use crate::cgroup::ContainerCgroup;

/// `BPF_CGROUP_INET_INGRESS`, `BPF_CGROUP_INET_EGRESS` (<linux/bpf.h>): the storage's key.
const INGRESS: u32 = 0;
const EGRESS: u32 = 1;

/// The programs' storages: per attached cgroup, the container key.
pub(super) struct NetMaps {
    ingress_key: CgroupStorage<MapData, u64>,
    egress_key: CgroupStorage<MapData, u64>,
}

impl NetMaps {
    pub(super) fn new(ingress: Map, egress: Map) -> Result<NetMaps, MapError> {
        Ok(NetMaps {
            ingress_key: CgroupStorage::try_from(ingress)?,
            egress_key: CgroupStorage::try_from(egress)?,
        })
    }
}

/// A container whose traffic is counted; dropping its links detaches the programs (its
/// counters stay: an ended container's traffic is still shown).
pub(super) struct Attached {
    links: Vec<CgroupSkbLink>,
    /// The directory is the launcher's own (not the daemon's).
    adopted: bool,
}

/// The two programs by name, with how each attaches and which storage key it reads.
pub(super) const PROGRAMS: [(&str, CgroupSkbAttachType, u32); 2] = [
    ("net_ingress", CgroupSkbAttachType::Ingress, INGRESS),
    ("net_egress", CgroupSkbAttachType::Egress, EGRESS),
];

impl Tracker {
    /// Count the network traffic of container `key` from now on: attach the programs to its
    /// directory in the unified hierarchy. A container without one (no cgroup v2 mounted) is
    /// not counted. Blocking (a few syscalls).
    pub fn attach_network(&self, key: u64, cgroup: &ContainerCgroup) -> Result<bool, Error> {
        let Some((dir, adopted)) = cgroup.unified_dir() else {
            return Ok(false);
        };
        let file = std::fs::File::open(dir)
            .map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
        // A cgroup's id is its directory's inode number in cgroupfs.
        let id = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .ino();
        let mut links = Vec::new();
        {
            let mut ebpf = self.ebpf();
            for (name, attach_type, _) in PROGRAMS {
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
                    Error::Load(format!("attaching {name} to {}: {e}{cause}", dir.display()))
                })?;
                links.push(link);
            }
        }
        let mut maps = self.maps();
        for (name, _, attach_type) in PROGRAMS {
            let storage = match attach_type {
                INGRESS => &mut maps.net.ingress_key,
                _ => &mut maps.net.egress_key,
            };
            storage
                .insert(CgroupStorageKey::new(id, attach_type), key, 0)
                .map_err(|e| {
                    Error::map(
                        format!("naming {}'s container for {name}", dir.display()),
                        e,
                    )
                })?;
        }
        maps.attached.insert(key, Attached { links, adopted });
        Ok(true)
    }

    /// The container `key` ended: detach its programs from a directory that is not ours. In
    /// its own directory they count on until it is forgotten: processes it had past its
    /// process bound may still live there.
    pub fn container_ended(&self, key: u64) {
        if let Some(a) = self.maps().attached.get_mut(&key)
            && a.adopted
        {
            a.links.clear();
        }
    }

    /// The container `key`'s final values are taken: detach its programs everywhere (the
    /// retained container keeps its counters; its links need no descriptors any more).
    pub fn container_released(&self, key: u64) {
        if let Some(a) = self.maps().attached.get_mut(&key) {
            a.links.clear();
        }
    }
}
