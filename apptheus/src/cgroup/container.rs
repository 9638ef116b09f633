//! A container's directories: one in every hierarchy the daemon uses, made at admission,
//! found again after a restart, and removed when the container is gone.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    Error, Placement, Source, files,
    layout::{
        Hierarchy, Layout, Version, check_name, join_rel, last_components, read_proc_cgroup,
        walk_dirs,
    },
    parse,
};

/// The v2 controllers the daemon tries to enable along a container's path.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// One directory of a container, in one hierarchy.
#[derive(Clone, Debug)]
pub(super) struct Member {
    pub version: Version,
    /// v1: the hierarchy's controllers; v2: what the directory's cgroup.controllers listed when
    /// it was made or opened.
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
    /// The cgroup path of `dir`.
    pub rel: String,
    pub dir: PathBuf,
    /// The `<parent>` directory, when making this container made it too.
    pub created_parent: Option<PathBuf>,
}

impl Member {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// A container's cgroup: its directory in each hierarchy.
#[derive(Debug)]
pub struct ContainerCgroup {
    pub(super) rel_path: String,
    pub(super) members: Vec<Member>,
    /// Index in `members` of the directory in the primary hierarchy (see `Layout::primary`).
    pub(super) primary: usize,
}

impl Layout {
    /// Creates `<base>/<parent>/<id>` in every hierarchy the daemon uses.
    ///
    /// `<base>` is the cgroup of `launcher_pid` (Nested) or the hierarchy's root (Dedicated).
    /// The `<parent>` directory is made when missing, and remembered so that `remove` deletes
    /// only what this call made. On failure, the directories made so far are removed again.
    pub fn create(
        &self,
        launcher_pid: i32,
        placement: Placement,
        parent: &str,
        id: &str,
    ) -> Result<ContainerCgroup, Error> {
        check_name(parent)?;
        check_name(id)?;
        let launcher = match placement {
            Placement::Nested => Some(read_proc_cgroup(launcher_pid)?),
            Placement::Dedicated => None,
        };
        let mut container = ContainerCgroup {
            rel_path: String::new(),
            members: Vec::new(),
            primary: self.primary(),
        };
        for hierarchy in &self.hierarchies {
            let base = match &launcher {
                Some(entries) => hierarchy.path_in(entries),
                None => Ok(hierarchy.root.as_str()),
            };
            match base.and_then(|base| create_member(hierarchy, base, parent, id)) {
                Ok(member) => container.members.push(member),
                Err(error) => {
                    // A half-made container would leak its directories: undo them.
                    if let Err(undo) = container.remove() {
                        tracing::warn!("cannot undo a partly created cgroup: {undo}");
                    }
                    return Err(error);
                }
            }
        }
        container.rel_path = container.members[container.primary].rel.clone();
        Ok(container)
    }

    /// Reopens an existing container cgroup after a daemon restart. `rel` is its
    /// `ContainerCgroup::rel_path()`; `None` if that directory no longer exists.
    ///
    /// In the other hierarchies the container is found at the same path, or (nested placement
    /// on a hybrid host, where each hierarchy has its own base) where one of its processes is,
    /// or else as the only directory ending in the same `<parent>/<id>`. A hierarchy where it
    /// cannot be found is left out (logged). Directories of a reopened container count as its
    /// own for `remove`; of its `<parent>` directories, only those listed in `made_parents` (what
    /// `ContainerCgroup::made_parents` said before the restart) do.
    pub fn open(&self, rel: &str, made_parents: &[PathBuf]) -> Option<ContainerCgroup> {
        let primary = self.primary();
        let primary_dir = self.hierarchies[primary].dir_of(rel).ok()?;
        if !primary_dir.is_dir() {
            return None;
        }
        let pids = files::read_parsed(&primary_dir.join("cgroup.procs"), parse::parse_ids)
            .unwrap_or_default();
        let mut container = ContainerCgroup {
            rel_path: rel.to_string(),
            members: Vec::new(),
            primary: 0,
        };
        for (index, hierarchy) in self.hierarchies.iter().enumerate() {
            let found = if index == primary {
                Some((rel.to_string(), primary_dir.clone()))
            } else {
                find_container(hierarchy, rel, &pids)
            };
            let Some((member_rel, dir)) = found else {
                tracing::warn!(
                    "container cgroup {rel} not found in the {} hierarchy at {}",
                    hierarchy.name(),
                    hierarchy.mount_point.display()
                );
                continue;
            };
            if index == primary {
                container.primary = container.members.len();
            }
            let made = dir
                .parent()
                .filter(|p| made_parents.iter().any(|m| m == p))
                .map(Path::to_path_buf);
            container
                .members
                .push(open_member(hierarchy, member_rel, dir, made));
        }
        Some(container)
    }
}

impl ContainerCgroup {
    /// Its cgroup path below the hierarchy root: the memory hierarchy's where there is one,
    /// else the unified tree's. This is the `cgroup` label.
    pub fn rel_path(&self) -> &str {
        &self.rel_path
    }

    /// The `<parent>` directories that making this container made (and `remove` removes when
    /// they are empty).
    pub fn made_parents(&self) -> Vec<PathBuf> {
        self.members
            .iter()
            .filter_map(|m| m.created_parent.clone())
            .collect()
    }

    /// Every directory of this container.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.dir.clone()).collect()
    }

    /// Moves process `pid` (all its threads) into the container in every hierarchy.
    /// `Ok(false)` if the process no longer exists.
    pub fn add_process(&self, pid: i32) -> Result<bool, Error> {
        for member in &self.members {
            let procs = member.dir.join("cgroup.procs");
            match files::write(&procs, &pid.to_string()) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
                Err(error) => {
                    return Err(Error::io(
                        &format!("moving process {pid} into"),
                        &procs,
                        error,
                    ));
                }
            }
        }
        Ok(true)
    }

    /// The pids currently in the container.
    pub fn procs(&self) -> Vec<i32> {
        self.read_procs().unwrap_or_default()
    }

    pub(super) fn read_procs(&self) -> Option<Vec<i32>> {
        let member = self.members.get(self.primary)?;
        files::read_parsed(&member.dir.join("cgroup.procs"), parse::parse_ids)
    }

    /// The directory in the primary hierarchy.
    pub(super) fn primary_member(&self) -> Option<&Member> {
        self.members.get(self.primary)
    }

    /// The directory of the v1 hierarchy that holds `controller`.
    pub(super) fn v1_member(&self, controller: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.version == Version::V1 && m.has(controller))
    }

    /// The directory in the unified tree, if one is mounted.
    pub(super) fn v2_member(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.version == Version::V2)
    }

    /// The directory holding a controller's files: its v1 hierarchy (`v1_name`), else the v2
    /// directory if the controller (`v2_name`) is enabled there.
    pub(super) fn controller_member(&self, v1_name: &str, v2_name: &str) -> Option<&Member> {
        let v2 = || self.v2_member().filter(|m| m.has(v2_name));
        self.v1_member(v1_name).or_else(v2)
    }

    pub fn memory_source(&self) -> Source {
        match self.controller_member("memory", "memory") {
            Some(_) => Source::Cgroup,
            None => Source::Processes,
        }
    }

    pub fn pids_source(&self) -> Source {
        match self.controller_member("pids", "pids") {
            Some(_) => Source::Cgroup,
            None => Source::Processes,
        }
    }

    /// Removes the directories this container made, deepest first: its own directory in every
    /// hierarchy, then each `<parent>` it made if that is now empty. Fails while the container
    /// still holds processes (EBUSY), so that the caller retries later; a directory already
    /// gone counts as removed.
    pub fn remove(&self) -> Result<(), Error> {
        let mut first_error = None;
        for member in &self.members {
            match fs::remove_dir(&member.dir) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    let op = if error.raw_os_error() == Some(libc::EBUSY) {
                        "removing (it still holds processes or child cgroups)"
                    } else {
                        "removing"
                    };
                    first_error.get_or_insert(Error::io(op, &member.dir, error));
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        for parent in self
            .members
            .iter()
            .filter_map(|m| m.created_parent.as_ref())
        {
            match fs::remove_dir(parent) {
                Ok(()) => {}
                // Other containers still live in it, or it is gone already: both fine.
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::ENOTEMPTY | libc::EBUSY | libc::ENOENT)
                    ) => {}
                Err(error) => tracing::warn!("cannot remove {}: {error}", parent.display()),
            }
        }
        Ok(())
    }
}

/// Makes the container's directory in one hierarchy, below the cgroup path `base`.
fn create_member(
    hierarchy: &Hierarchy,
    base: &str,
    parent: &str,
    id: &str,
) -> Result<Member, Error> {
    let base_dir = hierarchy.dir_of(base)?;
    let parent_dir = base_dir.join(parent);
    let dir = parent_dir.join(id);
    if hierarchy.v2() {
        enable_controllers(&base_dir);
    }
    let mut created_parent = None;
    // Two tries: a sibling container's remove() may delete an empty `<parent>` between our
    // mkdir of it and our mkdir inside it.
    for attempt in 0..2 {
        if make_dir(&parent_dir)? {
            created_parent = Some(parent_dir.clone());
        }
        if hierarchy.v2() {
            enable_controllers(&parent_dir);
        }
        match fs::create_dir(&dir) {
            Ok(()) => break,
            // The id holds the launcher's pid, so a directory of that name is a leftover of an
            // earlier container of ours with a reused pid: take it over.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                tracing::info!("reusing existing cgroup {}", dir.display());
                break;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound && attempt == 0 => continue,
            Err(error) => {
                if let Some(made) = &created_parent {
                    let _ = fs::remove_dir(made);
                }
                return Err(Error::io("creating", &dir, error));
            }
        }
    }
    let rel = join_rel(&join_rel(base, parent), id);
    Ok(open_member(hierarchy, rel, dir, created_parent))
}

/// Describes a container directory that exists.
fn open_member(
    hierarchy: &Hierarchy,
    rel: String,
    dir: PathBuf,
    created_parent: Option<PathBuf>,
) -> Member {
    let controllers = match hierarchy.version {
        Version::V2 => read_controllers(&dir.join("cgroup.controllers")),
        Version::V1 => hierarchy.controllers.clone(),
    };
    Member {
        version: hierarchy.version,
        controllers,
        mount_point: hierarchy.mount_point.clone(),
        rel,
        dir,
        created_parent,
    }
}

/// Makes a directory; `Ok(false)` if it was there already.
fn make_dir(dir: &Path) -> Result<bool, Error> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(Error::io("creating", dir, error)),
    }
}

/// Enables in `dir`'s children the v2 controllers the daemon reads, as far as the kernel lets
/// it. It refuses (EBUSY) when `dir` holds processes: v2 allows no controller below a cgroup
/// that has processes of its own. The container then gets its numbers from its processes, so
/// a refusal is no error.
fn enable_controllers(dir: &Path) {
    let available = read_controllers(&dir.join("cgroup.controllers"));
    let subtree_control = dir.join("cgroup.subtree_control");
    let enabled = read_controllers(&subtree_control);
    for controller in V2_CONTROLLERS {
        let wanted = available.iter().any(|c| c == controller);
        let already = enabled.iter().any(|c| c == controller);
        if !wanted || already {
            continue;
        }
        if let Err(error) = files::write(&subtree_control, &format!("+{controller}")) {
            tracing::debug!(
                "cannot enable {controller} in {}: {error}",
                subtree_control.display()
            );
        }
    }
}

/// The controllers listed in a cgroup.controllers or cgroup.subtree_control file (none if
/// unreadable).
fn read_controllers(path: &Path) -> Vec<String> {
    files::read_text(path)
        .map(|text| parse::parse_controller_list(&text))
        .unwrap_or_default()
}

/// Finds a container's directory in a hierarchy other than the primary one (see
/// `Layout::open`). Returns its cgroup path and directory.
fn find_container(hierarchy: &Hierarchy, rel: &str, pids: &[i32]) -> Option<(String, PathBuf)> {
    if let Ok(dir) = hierarchy.dir_of(rel)
        && dir.is_dir()
    {
        return Some((rel.to_string(), dir));
    }
    // `<parent>/<id>`: the part of the path that is the same in every hierarchy.
    let tail = last_components(rel, 2)?;
    let ends_with_tail = |path: &str| path.ends_with(&format!("/{tail}"));
    for pid in pids {
        let Ok(entries) = read_proc_cgroup(*pid) else {
            continue;
        };
        if let Ok(path) = hierarchy.path_in(&entries)
            && ends_with_tail(path)
            && let Ok(dir) = hierarchy.dir_of(path)
        {
            return Some((path.to_string(), dir));
        }
    }
    let mut candidates = Vec::new();
    walk_dirs(&hierarchy.mount_point, 0, &mut |dir| {
        if let Some(path) = hierarchy.rel_of(dir)
            && ends_with_tail(&path)
        {
            candidates.push((path, dir.to_path_buf()));
        }
    });
    // Two candidates cannot be told apart: taking the wrong one would report, and later
    // remove, another container's directory.
    if candidates.len() == 1 {
        return candidates.pop();
    }
    None
}
