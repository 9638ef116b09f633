//! A container's directories: one in every hierarchy the daemon uses, made at admission,
//! found again after a restart, and removed when the container is gone.
use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    super::pidfd::Process,
    Error, Source, files,
    layout::{
        CROWDED, Crowded, Hierarchy, Launcher, Layout, Version, check_name, join_rel,
        last_components, read_proc_cgroup, walk_dirs,
    },
    parse,
    probe::ProbeFile,
};

/// The v2 controllers the daemon tries to enable along a container's path.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// One directory of a container, in one hierarchy.
/// A container's directory in the unified tree.
#[derive(Clone, Copy, Debug)]
pub struct UnifiedDir<'a> {
    pub dir: &'a Path,
    /// Its depth in the tree (the root is 0), as the kernel counts a cgroup's level.
    pub level: usize,
    /// The directory is the launcher's own, taken as it is (not the daemon's).
    pub adopted: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Member {
    /// Its hierarchy's index in the layout.
    pub hierarchy: usize,
    pub version: Version,
    /// v1: the hierarchy's controllers; v2: what the directory's cgroup.controllers listed when
    /// it was made or opened.
    pub controllers: Arc<[String]>,
    pub mount_point: Arc<Path>,
    /// The cgroup path of `dir`.
    pub rel: String,
    pub dir: PathBuf,
    /// The `<parent>` directory, when making this container made it too.
    pub created_parent: Option<PathBuf>,
    /// The daemon made `dir` (and removes it). A launcher's own cgroup that holds nothing but
    /// the container's processes is the container's cgroup as it is: not ours to change.
    pub owned: bool,
}

impl Member {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// What became of a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moved {
    /// The process is in the container's cgroups.
    Done,
    /// The process had exited: nothing was written.
    Gone,
    /// The process exited around a write: its pid may have named another process then.
    Raced,
}

/// A container's cgroup: its directory in each hierarchy.
#[derive(Debug)]
pub struct ContainerCgroup {
    pub(super) rel_path: String,
    pub(super) members: Vec<Member>,
    /// Index in `members` of the directory in the primary hierarchy (see `Layout::primary`).
    pub(super) primary: usize,
    /// Its CPU probe file, kept open between passes (see `probe`).
    pub(super) probe: ProbeFile,
}

impl Layout {
    /// Gives a container its directory in every hierarchy the daemon uses.
    ///
    /// With a `launcher` (nested placement) the base is the launcher's cgroup in each
    /// hierarchy; without one (dedicated), the hierarchy's root. Where the launcher's cgroup
    /// holds nothing but `members` (a Slurm task cgroup, a systemd scope: the job's own leaf),
    /// that cgroup is the container's as it is: nothing is made, moved or written there, and
    /// the batch system sees its job exactly as without apptheus. Elsewhere the container gets
    /// `<base>/<parent>/<id>`; the `<parent>` directory is made when missing, and remembered so
    /// that `remove` deletes only what this call made. On failure, what was made is removed.
    pub fn create(
        &self,
        launcher: Option<&Launcher>,
        parent: &str,
        id: &str,
        members: &[i32],
    ) -> Result<ContainerCgroup, Error> {
        check_name(parent)?;
        check_name(id)?;
        let mut container = ContainerCgroup {
            rel_path: String::new(),
            members: Vec::with_capacity(self.hierarchies.len()),
            primary: self.primary(),
            probe: ProbeFile::default(),
        };
        for (index, hierarchy) in self.hierarchies.iter().enumerate() {
            let member = match launcher {
                Some(launcher) => launcher.path_in(hierarchy).and_then(|base| {
                    if base != hierarchy.root && holds_only(hierarchy, base, members, &self.crowded)
                    {
                        adopt_member(hierarchy, base)
                    } else {
                        create_member(hierarchy, base, parent, id)
                    }
                }),
                None => create_member(hierarchy, &hierarchy.root, parent, id),
            };
            match member {
                Ok(member) => container.members.push(Member {
                    hierarchy: index,
                    ..member
                }),
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

    /// After a `Moved::Raced`: if the process that has `pid` now sits in one of `container`'s
    /// own directories and is not `is_member`, it is not the container's (it took the pid of
    /// one that exited): move it back where its parent is. Returns whether it did.
    pub fn send_back(
        &self,
        container: &ContainerCgroup,
        pid: i32,
        is_member: impl Fn(i32) -> bool,
    ) -> Result<bool, Error> {
        let Ok(now) = read_proc_cgroup(pid) else {
            return Ok(false);
        };
        let stat = procfs::process::Process::new(pid).and_then(|p| p.stat());
        let Ok(parent) = stat.map(|s| s.ppid) else {
            return Ok(false);
        };
        let Ok(parent_cgroups) = read_proc_cgroup(parent) else {
            return Ok(false);
        };
        if is_member(pid) {
            return Ok(false);
        }
        let mut moved = false;
        for member in container.members.iter().filter(|m| m.owned) {
            let Some(hierarchy) = self.hierarchies.get(member.hierarchy) else {
                continue;
            };
            if hierarchy.path_in(&now).ok() != Some(member.rel.as_str()) {
                continue;
            }
            let dir = hierarchy.dir_of(hierarchy.path_in(&parent_cgroups)?)?;
            let procs = dir.join("cgroup.procs");
            files::write(&procs, &pid.to_string())
                .map_err(|e| Error::io(&format!("moving process {pid} back into"), &procs, e))?;
            moved = true;
        }
        Ok(moved)
    }

    /// Reopens an existing container cgroup after a daemon restart. `rel` is its
    /// `ContainerCgroup::rel_path()`; `None` if that directory no longer exists.
    ///
    /// In the other hierarchies the container is found at the same path, or (nested placement
    /// on a hybrid host, where each hierarchy has its own base) where one of its processes is,
    /// or else as the only directory ending in the same `<parent>/<id>`. A hierarchy where it
    /// cannot be found is left out (logged). Directories of a reopened container count as its
    /// own for `remove` when root owns them and they are not in `adopted` (what
    /// `ContainerCgroup::adopted` said before the restart); of its `<parent>` directories, only
    /// those listed in `made_parents` (what `ContainerCgroup::made_parents` said) do.
    pub fn open(
        &self,
        rel: &str,
        made_parents: &[PathBuf],
        adopted: &[PathBuf],
    ) -> Option<ContainerCgroup> {
        let primary = self.primary();
        let primary_dir = self.hierarchies[primary].dir_of(rel).ok()?;
        if !primary_dir.is_dir() {
            return None;
        }
        let pids = files::read_parsed(&primary_dir.join("cgroup.procs"), parse::parse_ids)
            .unwrap_or_default();
        let mut container = ContainerCgroup {
            rel_path: rel.to_string(),
            members: Vec::with_capacity(self.hierarchies.len()),
            primary: 0,
            probe: ProbeFile::default(),
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
            let owned = !adopted.contains(&dir) && owned_by_root(&dir);
            let made = dir
                .parent()
                .filter(|p| owned && made_parents.iter().any(|m| m == p))
                .map(Path::to_path_buf);
            container.members.push(Member {
                hierarchy: index,
                ..open_member(hierarchy, member_rel, dir, made, owned)
            });
        }
        Some(container)
    }
}

impl ContainerCgroup {
    /// Closes its CPU probe file; the next read opens it again. On cgroupfs a removed cgroup
    /// fails the read of an open probe (ENODEV), which closes it too; a regular file (the
    /// tests' fake trees) would still be read after it is deleted.
    pub(crate) fn close_probe(&self) {
        self.probe.close();
    }

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

    /// The directories that are the launcher's own cgroup, taken as they are (not ours).
    pub fn adopted(&self) -> Vec<PathBuf> {
        self.members
            .iter()
            .filter(|m| !m.owned)
            .map(|m| m.dir.clone())
            .collect()
    }

    /// Moves `process` (all its threads) into the container in every hierarchy where the
    /// container has a directory of its own (in an adopted one it is already).
    ///
    /// A pid is written to cgroup.procs only while the process's pidfd shows it alive, checked
    /// before and after each write: alive after means the write moved that very process. Gone
    /// after means the pid may have been another process's by the time of the write
    /// (`Moved::Raced`): the caller puts that one back (`Layout::send_back`).
    pub fn add_process(&self, process: &Process) -> Result<Moved, Error> {
        let pid = process.pid();
        for member in self.members.iter().filter(|m| m.owned) {
            if !process.alive() {
                return Ok(Moved::Gone);
            }
            let procs = member.dir.join("cgroup.procs");
            match files::write(&procs, &pid.to_string()) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => return Ok(Moved::Gone),
                Err(error) => {
                    return Err(Error::io(
                        &format!("moving process {pid} into"),
                        &procs,
                        error,
                    ));
                }
            }
            if !process.alive() {
                return Ok(Moved::Raced);
            }
        }
        Ok(Moved::Done)
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

    /// Its directory in the unified (v2) tree, where one is mounted (also on hybrid hosts): the
    /// directory whose sockets the network programs count for it.
    pub fn unified_dir(&self) -> Option<UnifiedDir<'_>> {
        self.v2_member().map(|m| UnifiedDir {
            dir: &m.dir,
            level: m.rel.split('/').filter(|c| !c.is_empty()).count(),
            adopted: !m.owned,
        })
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

    /// `remove`, tried again every millisecond while the kernel reports a directory busy, for
    /// at most `within`. The exit event of a container's last process comes before the kernel
    /// takes that process out of its cgroup; and a batch system removes the job's cgroup
    /// milliseconds after the job's last process exits (slurmstepd, once: if our directory is
    /// still inside, the job's cgroups stay for good). So an ended container's directories go
    /// at once, not at the next sampling pass.
    pub fn remove_within(&self, within: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            match self.remove() {
                Err(error) if error.is_busy() && start.elapsed() < within => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => return other,
            }
        }
    }

    /// Removes the directories this container made, deepest first: its own directory in every
    /// hierarchy, then each `<parent>` it made if that is now empty. Fails while the container
    /// still holds processes (EBUSY), so that the caller retries later; a directory already
    /// gone counts as removed.
    pub fn remove(&self) -> Result<(), Error> {
        // An open file keeps the removed cgroup's kernel memory until it is closed.
        self.close_probe();
        let mut first_error = None;
        for member in self.members.iter().filter(|m| m.owned) {
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

/// Whether the cgroup `base` holds processes, and only processes of `members`.
fn holds_only(hierarchy: &Hierarchy, base: &str, members: &[i32], crowded: &Crowded) -> bool {
    let Ok(dir) = hierarchy.dir_of(base) else {
        return false;
    };
    if crowded.recent(&dir) {
        return false;
    }
    let Some(pids) = files::read_parsed(&dir.join("cgroup.procs"), parse::parse_ids) else {
        return false;
    };
    // Distinct pids: this many are not all members.
    if pids.len() > members.len() + CROWDED {
        crowded.note(dir);
        return false;
    }
    !pids.is_empty() && pids.iter().all(|p| members.contains(p))
}

/// Takes the launcher's own cgroup `base` as the container's directory in one hierarchy.
fn adopt_member(hierarchy: &Hierarchy, base: &str) -> Result<Member, Error> {
    let dir = hierarchy.dir_of(base)?;
    Ok(open_member(hierarchy, base.to_string(), dir, None, false))
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
    if hierarchy.v2() && may_enable_controllers(hierarchy, &base_dir) {
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
            // earlier container with a reused pid. Never taken over with what it holds: made
            // anew if it is empty (fresh counters), refused if it still holds processes.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_dir(&dir).map_err(|e| Error::io("replacing the leftover", &dir, e))?;
                tracing::info!("replaced the leftover cgroup {}", dir.display());
                if attempt == 0 {
                    continue;
                }
                return Err(Error::Invalid(format!(
                    "{} keeps coming back",
                    dir.display()
                )));
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
    // A v2 cgroup below a populated parent with threaded controllers (cpu, pids) enabled is
    // "domain invalid": no process can ever be moved into it.
    if hierarchy.v2()
        && files::read_text(&dir.join("cgroup.type")).is_some_and(|t| t.trim() == "domain invalid")
    {
        let _ = fs::remove_dir(&dir);
        if let Some(made) = &created_parent {
            let _ = fs::remove_dir(made);
        }
        return Err(Error::Invalid(format!(
            "{} would be a \"domain invalid\" cgroup (threaded controllers are enabled above it)",
            dir.display()
        )));
    }
    let rel = join_rel(&join_rel(base, parent), id);
    Ok(open_member(hierarchy, rel, dir, created_parent, true))
}

/// Whether the daemon may enable controllers for the children of `dir`. Never in a cgroup that
/// holds processes: v2 refuses the domain controllers there, and accepts the threaded ones
/// (cpu, pids), which makes every child "domain invalid" and changes a cgroup the daemon does
/// not own. The root is exempt from that rule (dedicated placement).
fn may_enable_controllers(hierarchy: &Hierarchy, dir: &Path) -> bool {
    let is_root = hierarchy.root == "/" && *dir == *hierarchy.mount_point;
    is_root
        || files::read_parsed(&dir.join("cgroup.procs"), parse::parse_ids)
            .is_some_and(|pids| pids.is_empty())
}

/// Describes a container directory that exists.
fn open_member(
    hierarchy: &Hierarchy,
    rel: String,
    dir: PathBuf,
    created_parent: Option<PathBuf>,
    owned: bool,
) -> Member {
    let controllers = match hierarchy.version {
        Version::V2 => read_controllers(&dir.join("cgroup.controllers")).into(),
        Version::V1 => hierarchy.controllers.clone(),
    };
    Member {
        hierarchy: 0,
        version: hierarchy.version,
        controllers,
        mount_point: hierarchy.mount_point.clone(),
        rel,
        dir,
        created_parent,
        owned,
    }
}

/// Whether root owns `dir`: a directory a user made (in a cgroup delegated to them) is never
/// the daemon's to remove.
fn owned_by_root(dir: &Path) -> bool {
    fs::metadata(dir).is_ok_and(|m| m.uid() == 0)
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
