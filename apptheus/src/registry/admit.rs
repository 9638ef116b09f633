//! Admission: a trusted peer becomes a container.
use std::{path::PathBuf, sync::Arc, time::SystemTime};

use super::{AdmitError, Container, Registry, monotonic_ns};
use crate::{
    cgroup::{ContainerCgroup, Placement},
    container::{Identity, unix_seconds, user_name},
    gateway::Peer,
    job::{self, Job},
    tracker,
};

impl Registry {
    /// Make a container of a trusted peer (blocking: cgroup files, a /proc walk). Returns its
    /// key and identity.
    pub fn admit(&self, peer: &Peer) -> Result<(u64, Arc<Identity>), AdmitError> {
        if let Some(key) = self.tracker.key_of(peer.pid)? {
            return Err(tracker::Error::AlreadyTracked { pid: peer.pid, key }.into());
        }
        let (id, exe) = Identity::id_of(&peer.exe_path, peer.pid);
        let key = self.reserve(&id)?;
        let res = self.admit_reserved(peer, key, id, exe);
        self.state().admitting.remove(&key);
        res
    }

    /// A key for a new container, if the limit allows one more.
    fn reserve(&self, id: &str) -> Result<u64, AdmitError> {
        let mut st = self.state();
        // Admissions run in parallel: the ones under way count against the limit too (once,
        // whether or not they are in the map yet).
        let admitted = st
            .containers
            .iter()
            .filter(|(k, c)| c.ended.is_none() && !st.admitting.contains(k))
            .count();
        if admitted + st.admitting.len() >= self.cfg.max_containers {
            return Err(AdmitError::Limit);
        }
        // An ended container of a recycled pid may still be retained under the same id.
        if st.containers.values().any(|c| c.identity.id == id) {
            st.containers
                .retain(|_, c| c.identity.id != id || c.ended.is_none());
        }
        st.next_key += 1;
        let key = st.next_key;
        st.admitting.insert(key);
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
    ) -> Result<(u64, Arc<Identity>), AdmitError> {
        let launcher = match self.layout.launcher(peer.pid) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(container = id.as_str(), pid = peer.pid, error = %e, "cannot create the container's cgroups");
                return Err(e.into());
            }
        };
        // In before the tracker: a fork event may come as soon as the launcher is tracked.
        self.insert(key, Identity::pending(id.clone()));
        let members = match self.tracker.register(peer.pid, key) {
            Ok(m) => m,
            Err(e) => {
                self.state().containers.remove(&key);
                if !matches!(
                    e,
                    tracker::Error::Exited { .. } | tracker::Error::AlreadyTracked { .. }
                ) {
                    tracing::error!(container = id.as_str(), error = %e, "cannot track the container's processes");
                }
                return Err(e.into());
            }
        };
        let nested = (self.cfg.placement == Placement::Nested).then_some(&launcher);
        let cgroup = match self.layout.create(nested, &self.cfg.parent, &id, &members) {
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
        let environs: Vec<_> = members.iter().take(8).map(|&p| job::environ(p)).collect();
        let identity = Arc::new(Identity {
            id,
            cgroup: cgroup.rel_path().to_string(),
            user: user_name(peer.uid),
            uid: peer.uid,
            pid: peer.pid,
            exe,
            exe_path: peer.exe_path.to_string_lossy().into_owned(),
            start_time: unix_seconds(SystemTime::now()),
            job: Job::find(&launcher_dirs, &environs),
        });
        let early = self.placed(key, identity.clone(), cgroup.clone());
        self.count_network(key, &identity.id, &cgroup);
        for pid in members.iter().chain(&early) {
            if let Err(e) = cgroup.add_process(*pid) {
                tracing::warn!(container = identity.id.as_str(), pid = *pid, error = %e, "cannot move a process into the container's cgroup");
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
            uid = peer.uid,
            exe = identity.exe_path.as_str(),
            processes = members.len(),
            cgroup = identity.cgroup.as_str(),
            "container started"
        );
        if live == 0 {
            self.end(key);
        }
        self.admitted.notify_one();
        Ok((key, identity))
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

    /// Add a container being admitted, before its cgroup is known.
    fn insert(&self, key: u64, identity: Identity) {
        let mut st = self.state();
        st.containers.insert(
            key,
            Container {
                identity: Arc::new(identity),
                cgroup: None,
                early_forks: Vec::new(),
                inherit_after_ns: u64::MAX,
                connected: true,
                ended: None,
            },
        );
        st.changed();
    }
}
