//! Taking back, at start, the containers a previous run of the daemon left.
//!
//! Before any launcher is admitted, every container whose cgroup still exists under
//! `--cgroup.parent` is put back in the registry: one whose cgroup still holds processes is
//! tracked again (its processes and their descendants, under a new key); one whose cgroup is
//! empty ended while the daemon was down, and is retained as ended. Identities come from the
//! state file, or, for a container it missed (admitted just before a crash), from the id and the
//! processes.
use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use crate::{
    cgroup::ContainerCgroup,
    container::{Identity, from_unix_seconds, pid_of_id, unix_seconds, user_name},
    pidfd::{Pidfd, Process},
    privacy::{Chosen, Privacy},
    registry::Registry,
    state::SavedContainer,
    testhook,
};

/// What `recover` found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub readopted: usize,
    pub processes: usize,
    pub ended: usize,
}

/// Put back into `registry` the containers of a previous run (blocking: cgroup files, /proc).
pub fn recover(registry: &Registry, saved: Vec<SavedContainer>) -> Recovery {
    let mut recovery = Recovery::default();
    let parent = registry.parent();
    let ours = |rel: &str| {
        let mut parts = rel.rsplit('/');
        let id = parts.next().unwrap_or("");
        parts.next() == Some(parent) && pid_of_id(id).is_some()
    };
    // By cgroup path: the state file's entries (a launcher's own cgroup that was adopted is
    // known only from there), then what the tree shows that it missed.
    let mut candidates: BTreeMap<String, Option<SavedContainer>> = saved
        .into_iter()
        .filter(|c| !c.adopted.is_empty() || ours(&c.identity.cgroup))
        .map(|c| (c.identity.cgroup.clone(), Some(c)))
        .collect();
    for rel in registry.left_cgroups() {
        if ours(&rel) {
            candidates.entry(rel).or_insert(None);
        }
    }
    for (rel, saved) in candidates {
        let made = saved.as_ref().map_or(&[][..], |s| &s.made_parents[..]);
        let adopted = saved.as_ref().map_or(&[][..], |s| &s.adopted[..]);
        let Some(cgroup) = registry.reopen(&rel, made, adopted) else {
            // Removed after the state file was written.
            continue;
        };
        // Found in the tree only: ours if root made it (a user may make directories of any name
        // in a cgroup delegated to them; those are never taken, nor removed).
        if saved.is_none() && !cgroup.adopted().is_empty() {
            tracing::warn!(
                cgroup = registry.privacy().cgroup(&rel).as_str(),
                "a directory shaped like a container's is not root's: left alone"
            );
            continue;
        }
        let listed = cgroup.procs();
        testhook::pause(testhook::Point::Hold, &listed);
        let roots = hold(&cgroup, &listed);
        let procs: Vec<i32> = roots.iter().map(Process::pid).collect();
        let privacy = registry.privacy();
        let (identity, end_time) = match saved {
            // A state file written with --privacy.hash-salt-file off holds clear values.
            Some(s) => (republish(privacy, s.identity), s.end_time),
            None => (guess(&rel, &procs, privacy), None),
        };
        let key = registry.next_key();
        let members = if roots.is_empty() {
            Vec::new()
        } else {
            match registry.readopt(roots, key) {
                Ok(members) => members,
                Err(e) => {
                    tracing::error!(container = identity.id.as_str(), error = %e, "cannot track a re-adopted container's processes");
                    let _ = registry.untrack(key);
                    Vec::new()
                }
            }
        };
        // Descendants that left the cgroup while the daemon was down come back in.
        let outside: Vec<&Process> = members
            .iter()
            .filter(|p| !procs.contains(&p.pid()))
            .collect();
        let pids: Vec<i32> = outside.iter().map(|p| p.pid()).collect();
        testhook::pause(testhook::Point::Move, &pids);
        for process in outside {
            registry.move_into(&cgroup, process, key, &identity.id);
        }
        let live = !members.is_empty();
        let end_time = (!live).then(|| {
            end_time
                .and_then(from_unix_seconds)
                .unwrap_or_else(SystemTime::now)
        });
        if live {
            recovery.readopted += 1;
            recovery.processes += members.len();
            tracing::info!(
                container = identity.id.as_str(),
                processes = members.len(),
                cgroup = identity.cgroup_label.as_str(),
                "container re-adopted"
            );
        } else {
            recovery.ended += 1;
            tracing::info!(
                container = identity.id.as_str(),
                cgroup = identity.cgroup_label.as_str(),
                "container ended while the daemon was down"
            );
        }
        registry.restore(key, identity, Arc::new(cgroup), end_time);
    }
    recovery
}

/// The processes `listed` in `cgroup`, each held by a pidfd before it is trusted: a pid is
/// held, then must be listed in the cgroup again while the pidfd shows its process alive. A
/// process that took a listed pid in between (its owner died) is elsewhere, and not taken.
fn hold(cgroup: &ContainerCgroup, listed: &[i32]) -> Vec<Process> {
    let mut held: Vec<Process> = listed
        .iter()
        .filter_map(|&pid| Some(Process::new(pid, Pidfd::open(pid).ok()??)))
        .collect();
    let again = cgroup.procs();
    held.retain(|p| again.contains(&p.pid()) && p.alive());
    held
}

/// The identity of a container found in the cgroup tree but not in the state file: the exe and
/// pid from its id, the user and exe path from the launcher if it still runs in the container
/// (else the user of any of its processes). Its start is unknown: the restart's time stands for
/// it (a directory's times are its owner's to set).
fn guess(rel: &str, procs: &[i32], privacy: &Privacy) -> Identity {
    let id = rel.rsplit('/').next().unwrap_or_default().to_string();
    let pid = pid_of_id(&id).unwrap_or(0);
    let exe = id
        .rsplit_once('_')
        .map_or(id.as_str(), |(exe, _)| exe)
        .to_string();
    let launcher_here = procs.contains(&pid);
    let owner = if launcher_here {
        Some(pid)
    } else {
        procs.first().copied()
    };
    let uid = owner
        .and_then(|p| procfs::process::Process::new(p).ok())
        .and_then(|p| p.uid().ok())
        .unwrap_or(u32::MAX);
    let exe_path = launcher_here
        .then(|| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let start_time = unix_seconds(SystemTime::now());
    let user = if uid == u32::MAX {
        "unknown".into()
    } else {
        user_name(uid)
    };
    let published = privacy.publish(&user, uid, &exe_path, rel);
    Identity {
        id,
        cgroup: rel.to_string(),
        cgroup_label: published.cgroup_label,
        user: published.user,
        uid: published.uid,
        pid,
        exe,
        exe_path: published.exe_path,
        start_time,
        job: Default::default(),
        // The uid of its processes now: the user who runs them.
        owner: (uid != u32::MAX).then_some(uid),
    }
}

/// A saved identity in the published form of this run.
fn republish(privacy: &Privacy, mut identity: Identity) -> Identity {
    let published = privacy.republish(
        &identity.user,
        &identity.uid,
        &identity.exe_path,
        &identity.cgroup,
    );
    identity.user = published.user;
    identity.uid = published.uid;
    identity.exe_path = published.exe_path;
    identity.cgroup_label = published.cgroup_label;
    identity.job.image = privacy.chosen(Chosen::Image, &identity.job.image);
    identity.job.account = privacy.chosen(Chosen::Account, &identity.job.account);
    identity
}
