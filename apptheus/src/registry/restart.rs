//! What a restart's recovery (`crate::recovery`) needs from the registry: the container cgroups
//! a previous run left, reopened, and their processes tracked again. The registry owns the
//! layout, the tracker and the configuration; recovery asks through these, not through them.
use std::path::PathBuf;

use super::Registry;
use crate::{cgroup::ContainerCgroup, pidfd::Process, tracker};

impl Registry {
    /// The name of the directory containers are made in (`--cgroup.parent`).
    pub fn parent(&self) -> &str {
        &self.cfg.parent
    }

    /// The container cgroups a previous run left, by path (see `cgroup::Layout::list`).
    pub fn left_cgroups(&self) -> Vec<String> {
        self.layout.list(&self.cfg.parent)
    }

    /// Reopen the container cgroup at `rel` (see `cgroup::Layout::open`); `None` if gone.
    pub fn reopen(
        &self,
        rel: &str,
        made_parents: &[PathBuf],
        adopted: &[PathBuf],
    ) -> Option<ContainerCgroup> {
        self.layout.open(rel, made_parents, adopted)
    }

    /// Track `roots` and their descendants again under `key`: the processes now tracked.
    pub fn readopt(&self, roots: Vec<Process>, key: u64) -> Result<Vec<Process>, tracker::Error> {
        self.tracker.readopt(roots, key).map(|t| t.members)
    }

    /// Forget whatever is tracked under `key` (a re-adoption that failed half-way).
    pub fn untrack(&self, key: u64) -> Result<(), tracker::Error> {
        self.tracker.unregister(key)
    }
}
