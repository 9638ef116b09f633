//! Admission: a trusted peer becomes a container.
//!
//! The launcher is held by its pidfd from identification on; every process of its tree is held
//! by a pidfd from before it is tracked until it is moved, and moved only while alive (see
//! `ContainerCgroup::add_process`), so a pid reused meanwhile is never moved.
use std::{path::PathBuf, sync::Arc, time::SystemTime};

use super::{AdmitError, Registry, monotonic_ns};
use crate::{
    cgroup::{ContainerCgroup, Moved, Placement},
    container::{Identity, unix_seconds, user_name},
    job::{self, Job},
    launcher::Peer,
    pidfd::Process,
    privacy::Chosen,
    testhook, tracker,
};

/// A container just admitted.
pub struct Admitted {
    pub key: u64,
    pub identity: Arc<Identity>,
    /// Cancelled when the container ends.
    pub gone: tokio_util::sync::CancellationToken,
    /// Cancelled once the daemon has let go of its cgroup (see `Registry::released`).
    pub released: tokio_util::sync::CancellationToken,
}

impl Registry {
    /// Make a container of a trusted peer (blocking: cgroup files, a /proc walk). Returns its
    /// key and identity.
    pub fn admit(&self, peer: &Peer) -> Result<Admitted, AdmitError> {
        if let Some(key) = self.tracker.key_of(peer.pid)? {
            return Err(tracker::Error::AlreadyTracked { pid: peer.pid, key }.into());
        }
        let (id, exe) = Identity::id_of(&peer.exe_path, peer.pid);
        // Users are told apart by their uid as published: the same with or without
        // --privacy.hash-salt-file for a given uid, and what the state file keeps for a restart.
        let uid = self.cfg.privacy.uid(peer.uid);
        let key = match self.reserve(&id, &uid) {
            Ok(key) => key,
            Err(e) => {
                // Refused by a count: the admission turn it took is not spent.
                self.state().give_back_turn(&uid);
                return Err(e);
            }
        };
        let res = self.admit_reserved(peer, key, id, exe, SystemTime::now());
        let mut st = self.state();
        st.admitting.remove(&key);
        // Shown from now on (see `entries`).
        st.changed();
        drop(st);
        if res.is_ok() {
            self.admitted.notify_one();
        }
        res
    }

    /// A key for a new container of `uid`, if the limits allow one more.
    fn reserve(&self, id: &str, uid: &str) -> Result<u64, AdmitError> {
        let mut st = self.state();
        let limits = &self.cfg.limits;
        // Admissions run in parallel: the ones under way count against the limits too, once,
        // whether or not they are in the map yet.
        let admitted = st
            .containers
            .iter()
            .filter(|(k, c)| c.ended.is_none() && !st.admitting.contains_key(k))
            .map(|(_, c)| c.identity.uid.as_str());
        let under_way = st.admitting.values().map(String::as_str);
        let (all, users) = admitted.chain(under_way).fold((0, 0), |(all, users), u| {
            (all + 1, users + usize::from(u == uid))
        });
        if all >= self.cfg.max_containers {
            return Err(AdmitError::Limit("--gateway.max-containers"));
        }
        if users >= limits.containers_per_user {
            return Err(AdmitError::Limit("--gateway.max-containers-per-user"));
        }
        // An ended container of a recycled pid may still be retained under the same id (the
        // id is the contract's `<exe>_<pid>`; keys never repeat): the new one takes its place,
        // and it is forgotten everywhere, in the kernel's maps too, as at the end of its
        // retention. Its directories are the new one's now.
        let recycled: Vec<u64> = st
            .containers
            .iter()
            .filter(|(_, c)| c.identity.id == id && c.ended.is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in recycled {
            st.containers.remove(&key);
            st.changed();
            self.forget_in_tracker(key);
        }
        st.next_key += 1;
        let key = st.next_key;
        st.admitting.insert(key, uid.to_string());
        Ok(key)
    }

    /// The rest of `admit`, once a slot is reserved: track the launcher's process tree, give
    /// the container its cgroup (the launcher's own where it holds nothing else), move the
    /// processes in.
    fn admit_reserved(
        &self,
        peer: &Peer,
        key: u64,
        id: String,
        exe: String,
        started: SystemTime,
    ) -> Result<Admitted, AdmitError> {
        let launcher = match self.layout.launcher(peer.pid) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(container = id.as_str(), pid = peer.pid, error = %e, "cannot create the container's cgroups");
                return Err(e.into());
            }
        };
        // Read by pid: the peer's only if its pidfd shows it alive after.
        let root = match peer.pidfd.try_clone() {
            Ok(fd) => Process::new(peer.pid, fd),
            Err(e) => return Err(tracker::Error::io("duplicating the peer's pidfd", e).into()),
        };
        if !root.alive() {
            return Err(tracker::Error::Exited { pid: peer.pid }.into());
        }
        // In before the tracker: a fork event may come as soon as the launcher is tracked.
        // Its start is when its admission began: a launcher whose processes all exit during
        // the walk ends after it started, not before.
        let mut pending = Identity::pending(id.clone(), self.cfg.privacy.uid(peer.uid));
        pending.start_time = unix_seconds(started);
        self.insert(key, pending);
        let tracked = match self.tracker.register(root, key) {
            Ok(t) => t,
            Err(e) => {
                self.state().containers.remove(&key);
                // Whatever a failed registration left in the kernel's maps goes with it.
                let _ = self.tracker.unregister(key);
                if !matches!(
                    e,
                    tracker::Error::Exited { .. } | tracker::Error::AlreadyTracked { .. }
                ) {
                    tracing::error!(container = id.as_str(), error = %e, "cannot track the container's processes");
                }
                return Err(e.into());
            }
        };
        if !tracked.complete {
            self.walk_cut_short(key, &id);
        }
        let pids: Vec<i32> = tracked.members.iter().map(Process::pid).collect();
        let nested = (self.cfg.placement == Placement::Nested).then_some(&launcher);
        // apptheus-exec's parent waits beside its child (the peer) for the container's end: a
        // leaf that holds nothing else is still the job's own (an `srun apptheus-exec` task
        // cgroup), so it counts as the tree's for the choice of the container's cgroup. It is
        // not tracked, and not moved.
        let mut in_leaf = pids.clone();
        in_leaf.extend(waiting_launcher(peer));
        let cgroup = match self.layout.create(nested, &self.cfg.parent, &id, &in_leaf) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                self.state().containers.remove(&key);
                let _ = self.tracker.unregister(key);
                tracing::error!(container = id.as_str(), pid = peer.pid, error = %e, "cannot create the container's cgroups");
                return Err(e.into());
            }
        };
        let launcher_dirs: Vec<PathBuf> = self
            .layout
            .launcher_paths(&launcher)
            .into_iter()
            .map(|(_, dir)| dir)
            .collect();
        // Environments are read by pid, and kept only if the process is still the one held:
        // they only ever become labels. Only the variables naming a job are kept of them.
        let environs: Vec<job::Env> = tracked
            .members
            .iter()
            .take(8)
            .filter_map(|p| {
                let env = job::environ(p.pid());
                p.alive().then_some(env)
            })
            .collect();
        // The one place an admitted container's identity is made: published as it will be seen
        // everywhere (series, state file, log lines).
        let privacy = &self.cfg.privacy;
        let published = privacy.publish(
            &user_name(peer.uid),
            peer.uid,
            &peer.exe_path.to_string_lossy(),
            cgroup.rel_path(),
        );
        let mut job = Job::find(&launcher_dirs, &environs, (peer.uid, peer.gid));
        // Values the user chose that may name them or their project.
        job.image = privacy.chosen(Chosen::Image, &job.image);
        job.account = privacy.chosen(Chosen::Account, &job.account);
        let identity = Arc::new(Identity {
            id,
            cgroup: cgroup.rel_path().to_string(),
            cgroup_label: published.cgroup_label,
            user: published.user,
            uid: published.uid,
            pid: peer.pid,
            exe,
            exe_path: published.exe_path,
            start_time: unix_seconds(started),
            job,
            owner: Some(peer.uid),
        });
        let early = self.placed(key, identity.clone(), cgroup.clone());
        self.count_network(key, &identity.id, &cgroup);
        testhook::pause(testhook::Point::Move, &pids);
        for process in &tracked.members {
            self.move_into(&cgroup, process, key, &identity.id);
        }
        for pid in early {
            if let Some(process) = self.tracker.member(pid, key) {
                self.move_into(&cgroup, &process, key, &identity.id);
            }
        }
        let now = monotonic_ns();
        let live = self
            .tracker
            .counters(key)
            .ok()
            .flatten()
            .map_or(0, |c| c.live);
        if let Some(c) = self.state().containers.get_mut(&key)
            && c.inherit_after_ns == u64::MAX
        {
            c.inherit_after_ns = now;
        }
        tracing::info!(
            container = identity.id.as_str(),
            pid = peer.pid,
            uid = identity.uid.as_str(),
            exe = identity.exe_path.as_str(),
            processes = pids.len(),
            cgroup = identity.cgroup_label.as_str(),
            "container started"
        );
        if live == 0 {
            self.end(key);
        }
        Ok(Admitted {
            key,
            gone: self.gone(key),
            released: self.released(key),
            identity,
        })
    }

    /// Move one of `key`'s processes into its cgroup; if the process exited around the write,
    /// put back whatever process took its pid meanwhile (it is not the container's).
    pub fn move_into(&self, cgroup: &ContainerCgroup, process: &Process, key: u64, id: &str) {
        let pid = process.pid();
        match cgroup.add_process(process) {
            Ok(Moved::Done | Moved::Gone) => {}
            Ok(Moved::Raced) => {
                let is_member = |p: i32| matches!(self.tracker.key_of(p), Ok(Some(k)) if k == key);
                match self.layout.send_back(cgroup, pid, is_member) {
                    Ok(true) => tracing::warn!(
                        container = id,
                        pid,
                        "a process that took the pid of one of the container's while it was moved was put back where its parent is"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(container = id, pid, error = %e, "cannot put back a process that took the pid of one of the container's")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(container = id, pid, error = %e, "cannot move a process into the container's cgroup");
            }
        }
    }

    /// The container being admitted has its cgroup: from now on fork events move into it.
    /// Returns the children forked before, to move too.
    fn placed(&self, key: u64, identity: Arc<Identity>, cgroup: Arc<ContainerCgroup>) -> Vec<i32> {
        let mut st = self.state();
        st.made_parents.extend(cgroup.made_parents());
        let Some(c) = st.containers.get_mut(&key) else {
            return Vec::new();
        };
        c.identity = identity;
        c.cgroup = Some(cgroup);
        let early = std::mem::take(&mut c.early_forks);
        st.changed();
        early
    }
}

/// The peer's parent, if it runs the very executable the peer was trusted for (apptheus-exec's
/// parent, which connected first through its child and waits for it). Read by pid: at worst
/// the parent exited and its pid went to another process of the same trusted executable,
/// which then stays in an adopted leaf, as that parent would have.
fn waiting_launcher(peer: &Peer) -> Option<i32> {
    let ppid = procfs::process::Process::new(peer.pid)
        .and_then(|p| p.stat())
        .ok()?
        .ppid;
    let exe = std::fs::read_link(format!("/proc/{ppid}/exe")).ok()?;
    (ppid > 1 && exe == peer.exe_path).then_some(ppid)
}

impl Registry {
    /// Add a container being admitted, before its cgroup is known.
    fn insert(&self, key: u64, identity: Identity) {
        let mut st = self.state();
        st.containers
            .insert(key, super::Container::pending(identity));
        st.changed();
    }
}
