//! Container cgroups: one directory per container in every cgroup hierarchy the daemon uses, and
//! the counters read from them.
//!
//! Hosts come in three layouts, all found in /proc/self/mountinfo and never assumed:
//! - pure v1 (RHEL 7/8 era): one hierarchy per controller (or per group of co-mounted
//!   controllers such as `cpu,cpuacct`), usually under /sys/fs/cgroup/<name>;
//! - pure v2: one unified tree, usually at /sys/fs/cgroup;
//! - hybrid: v1 hierarchies for the controllers plus a unified tree (e.g. at
//!   /sys/fs/cgroup/unified) that may hold no controller at all.
//!
//! A container gets `<base>/<parent>/<id>` in each v1 hierarchy holding cpu, cpuacct, memory,
//! pids or blkio, and in the unified tree where one is mounted. Its numbers come from the v1
//! hierarchy of a controller when there is one, else from its v2 directory when the controller is
//! enabled there. When no memory or pids controller covers the container (v2 forbids enabling a
//! controller below a cgroup that holds processes, which is where a nested container's base
//! usually is), those numbers are computed from the container's processes instead.

mod parse;

// The fuzz targets' harnesses (re-exported as `crate::fuzzing`).
pub(crate) mod fuzzing;

#[cfg(test)]
mod host_tests;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use parse::{IoBytes, ProcCgroup};

/// How the host's cgroups are organised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only v1 hierarchies.
    V1,
    /// Only the unified (v2) tree.
    V2,
    /// v1 hierarchies for the controllers and a unified tree beside them.
    Hybrid,
}

/// Where a container's cgroup is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Inside the cgroup the launcher is in, so the container stays under its job's limits.
    Nested,
    /// Under each hierarchy's root.
    Dedicated,
}

/// Where the numbers of one resource come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A controller's files in the container's cgroup.
    Cgroup,
    /// The container's processes, from /proc.
    Processes,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cgroup => "cgroup",
            Source::Processes => "processes",
        }
    }
}

/// The v1 controllers the daemon uses; a v1 hierarchy with none of them is ignored.
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];

/// The v2 controllers the daemon tries to enable along a container's path.
const V2_CONTROLLERS: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// Bounds the directory walks of `open` and `list`: cgroup trees are shallow, and a bound keeps
/// a pathological tree from recursing without end.
const MAX_WALK_DEPTH: usize = 32;

/// One mounted hierarchy the daemon uses.
#[derive(Clone, Debug)]
struct Hierarchy {
    v2: bool,
    /// The controllers of a v1 hierarchy that the daemon uses (a subset of `V1_CONTROLLERS`);
    /// empty for the unified tree.
    controllers: Vec<String>,
    mount_point: PathBuf,
    /// The cgroup path that `mount_point` shows (mountinfo's root field): "/" unless only a
    /// sub-tree is mounted, as in a container without a cgroup namespace.
    root: String,
}

impl Hierarchy {
    /// A short name for messages: "cgroup2" or the v1 controllers, e.g. "cpu,cpuacct".
    fn name(&self) -> String {
        if self.v2 {
            "cgroup2".to_string()
        } else {
            self.controllers.join(",")
        }
    }

    /// The directory of cgroup path `rel` (a path as /proc/<pid>/cgroup writes it).
    fn dir_of(&self, rel: &str) -> Result<PathBuf> {
        if !rel.starts_with('/') || rel.split('/').any(|part| part == "." || part == "..") {
            bail!("cgroup path {rel:?} is not a plain absolute path");
        }
        let below = if self.root == "/" {
            rel
        } else {
            rel.strip_prefix(self.root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                .with_context(|| {
                    format!(
                        "cgroup path {rel:?} is outside the part {:?} of the {} hierarchy mounted at {}",
                        self.root,
                        self.name(),
                        self.mount_point.display()
                    )
                })?
        };
        let below = below.trim_start_matches('/');
        if below.is_empty() {
            return Ok(self.mount_point.clone());
        }
        Ok(self.mount_point.join(below))
    }

    /// The cgroup path of a directory below the mount point (the inverse of `dir_of`).
    fn rel_of(&self, dir: &Path) -> Option<String> {
        let below = dir.strip_prefix(&self.mount_point).ok()?.to_str()?;
        if below.is_empty() {
            return Some(self.root.clone());
        }
        Some(join_rel(&self.root, below))
    }

    /// The path of this hierarchy's cgroup among the lines of a /proc/<pid>/cgroup.
    fn path_in<'a>(&self, entries: &'a [ProcCgroup]) -> Result<&'a str> {
        let entry = if self.v2 {
            entries
                .iter()
                .find(|entry| entry.hierarchy_id == 0 && entry.controllers.is_empty())
        } else {
            // Each controller belongs to one hierarchy, so one shared name identifies it.
            entries.iter().find(|entry| {
                entry
                    .controllers
                    .iter()
                    .any(|controller| self.controllers.contains(controller))
            })
        };
        entry
            .map(|entry| entry.path.as_str())
            .with_context(|| format!("no line for the {} hierarchy", self.name()))
    }
}

/// The cgroup hierarchies of this host, detected from /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The v1 hierarchies in mountinfo order, then the unified tree if mounted.
    hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// Detects the layout from /proc/self/mountinfo.
    pub fn detect() -> Result<Layout> {
        let path = "/proc/self/mountinfo";
        let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        Layout::from_mountinfo(&text).with_context(|| format!("parsing {path}"))
    }

    /// The layout that a mountinfo text describes.
    pub fn from_mountinfo(text: &str) -> Result<Layout> {
        let mounts = parse::parse_mountinfo(text)?;
        // (device, hierarchy): a hierarchy mounted twice shares its device number.
        let mut found: Vec<(String, Hierarchy)> = Vec::new();
        for mount in mounts {
            let controllers: Vec<String> = mount
                .options
                .iter()
                .filter(|option| V1_CONTROLLERS.contains(&option.as_str()))
                .cloned()
                .collect();
            // name=systemd, cpuset, devices, freezer...: nothing the daemon reads.
            if !mount.v2 && controllers.is_empty() {
                continue;
            }
            let hierarchy = Hierarchy {
                v2: mount.v2,
                controllers,
                mount_point: PathBuf::from(&mount.mount_point),
                root: mount.root,
            };
            match found.iter_mut().find(|(device, _)| *device == mount.device) {
                // Of two mounts of one hierarchy keep the one that shows more of the tree.
                Some((_, kept)) => {
                    if hierarchy.root.len() < kept.root.len() {
                        *kept = hierarchy;
                    }
                }
                None => found.push((mount.device, hierarchy)),
            }
        }
        let mut hierarchies: Vec<Hierarchy> = found.into_iter().map(|(_, h)| h).collect();
        // v1 first, the unified tree last (a stable sort keeps mountinfo order otherwise).
        hierarchies.sort_by_key(|hierarchy| hierarchy.v2);
        if hierarchies.is_empty() {
            bail!(
                "no cgroup hierarchy is mounted: neither cgroup2 nor a v1 hierarchy with one of {}",
                V1_CONTROLLERS.join(", ")
            );
        }
        Ok(Layout { hierarchies })
    }

    pub fn mode(&self) -> Mode {
        let v1 = self.hierarchies.iter().any(|h| !h.v2);
        let v2 = self.hierarchies.iter().any(|h| h.v2);
        match (v1, v2) {
            (true, true) => Mode::Hybrid,
            (true, false) => Mode::V1,
            _ => Mode::V2,
        }
    }

    /// The mount points of the hierarchies the daemon uses (for messages and diagnostics).
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.mount_point.clone())
            .collect()
    }

    /// The hierarchy whose path names a container: the v1 memory hierarchy where there is one
    /// (on a hybrid host the numbers come from v1, and batch systems place jobs there), else the
    /// unified tree, else the first one.
    fn primary(&self) -> usize {
        let position =
            |wanted: &dyn Fn(&Hierarchy) -> bool| self.hierarchies.iter().position(wanted);
        position(&|h| h.controllers.iter().any(|c| c == "memory"))
            .or_else(|| position(&|h| h.v2))
            .unwrap_or(0)
    }

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
    ) -> Result<ContainerCgroup> {
        check_name(parent).context("bad cgroup parent name")?;
        check_name(id).context("bad container id")?;
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
                Some(entries) => hierarchy
                    .path_in(entries)
                    .with_context(|| format!("finding the cgroup of launcher {launcher_pid}")),
                None => Ok(hierarchy.root.as_str()),
            };
            match base.and_then(|base| create_member(hierarchy, base, parent, id)) {
                Ok(member) => container.members.push(member),
                Err(error) => {
                    // A half-made container would leak its directories: undo them.
                    if let Err(undo) = container.remove() {
                        tracing::warn!("cannot undo a partly created cgroup: {undo:#}");
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
        let pids =
            read_parsed(&primary_dir.join("cgroup.procs"), parse::parse_ids).unwrap_or_default();
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

    /// The paths (as `rel_path` gives them) of the existing directories named
    /// `<parent>/<something>` anywhere in the primary hierarchy: the containers a previous run
    /// of the daemon left, in either placement.
    pub fn list(&self, parent: &str) -> Vec<String> {
        let hierarchy = &self.hierarchies[self.primary()];
        let mut found = Vec::new();
        walk_dirs(&hierarchy.mount_point, 0, &mut |dir| {
            let in_parent = dir
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|name| name == parent);
            if in_parent {
                found.extend(hierarchy.rel_of(dir));
            }
        });
        found.sort();
        found
    }
}

/// One directory of a container, in one hierarchy.
#[derive(Clone, Debug)]
struct Member {
    v2: bool,
    /// v1: the hierarchy's controllers; v2: what the directory's cgroup.controllers listed when
    /// it was made or opened.
    controllers: Vec<String>,
    mount_point: PathBuf,
    /// The cgroup path of `dir`.
    rel: String,
    dir: PathBuf,
    /// The `<parent>` directory, when making this container made it too.
    created_parent: Option<PathBuf>,
}

impl Member {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Makes the container's directory in one hierarchy, below the cgroup path `base`.
fn create_member(hierarchy: &Hierarchy, base: &str, parent: &str, id: &str) -> Result<Member> {
    let base_dir = hierarchy.dir_of(base)?;
    let parent_dir = base_dir.join(parent);
    let dir = parent_dir.join(id);
    if hierarchy.v2 {
        enable_controllers(&base_dir);
    }
    let mut created_parent = None;
    // Two tries: a sibling container's remove() may delete an empty `<parent>` between our
    // mkdir of it and our mkdir inside it.
    for attempt in 0..2 {
        if make_dir(&parent_dir)? {
            created_parent = Some(parent_dir.clone());
        }
        if hierarchy.v2 {
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
                return Err(error).with_context(|| format!("creating {}", dir.display()));
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
    let controllers = if hierarchy.v2 {
        read_controllers(&dir.join("cgroup.controllers"))
    } else {
        hierarchy.controllers.clone()
    };
    Member {
        v2: hierarchy.v2,
        controllers,
        mount_point: hierarchy.mount_point.clone(),
        rel,
        dir,
        created_parent,
    }
}

/// Makes a directory; `Ok(false)` if it was there already.
fn make_dir(dir: &Path) -> Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error).with_context(|| format!("creating {}", dir.display())),
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
        if let Err(error) = write_file(&subtree_control, &format!("+{controller}")) {
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
    read_text(path)
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

/// The last `count` components of a cgroup path, joined by '/'.
fn last_components(rel: &str, count: usize) -> Option<String> {
    let parts: Vec<&str> = rel.split('/').filter(|part| !part.is_empty()).collect();
    if parts.len() < count {
        return None;
    }
    Some(parts[parts.len() - count..].join("/"))
}

/// Calls `visit` for every directory below `dir` (not `dir` itself), depth first.
fn walk_dirs(dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path)) {
    if depth >= MAX_WALK_DEPTH {
        return;
    }
    // Directories can vanish while we walk; what cannot be read is skipped.
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_dir {
            let path = entry.path();
            visit(&path);
            walk_dirs(&path, depth + 1, visit);
        }
    }
}

/// `base` + "/" + `name` for cgroup paths ("/" + "x" is "/x").
fn join_rel(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// A directory name we are about to create must be one plain path component.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." {
        bail!("{name:?} is not a directory name");
    }
    if name.contains(['/', '\0', '\n']) {
        bail!("{name:?} must be a single directory name (no '/', NUL or newline)");
    }
    Ok(())
}

fn read_proc_cgroup(pid: i32) -> Result<Vec<ProcCgroup>> {
    let path = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse::parse_proc_cgroup(&text).with_context(|| format!("parsing {path}"))
}

/// Writes a short text to a kernel file in one write(2), without creating or truncating it.
fn write_file(path: &Path, text: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// Reads a cgroup or proc file; `None` when it is missing or unreadable. Missing files are
/// normal (memory.peak before Linux 5.19, swap files without swap accounting), hence the quiet
/// log levels: this runs at every sample.
fn read_text(path: &Path) -> Option<String> {
    read_with(path, str::to_string)
}

thread_local! {
    /// The sampler reads thousands of small files per pass: one buffer per thread, reused.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Opens, reads to the end and closes `path`, and hands its text to `f`. Unlike
/// `fs::read_to_string` it asks no `statx` for a size (cgroup files report 4096 whatever they
/// hold) and allocates nothing once the thread's buffer has grown.
fn read_with<T>(path: &Path, f: impl FnOnce(&str) -> T) -> Option<T> {
    use std::io::Read as _;
    let report = |error: io::Error| {
        if error.kind() == io::ErrorKind::NotFound {
            tracing::trace!("{} is missing", path.display());
        } else {
            tracing::debug!("cannot read {}: {error}", path.display());
        }
    };
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) => {
            report(error);
            return None;
        }
    };
    READ_BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        loop {
            if buf.len() == buf.capacity() {
                buf.reserve(4096);
            }
            let filled = buf.len();
            buf.resize(buf.capacity(), 0);
            match file.read(&mut buf[filled..]) {
                Ok(0) => {
                    buf.truncate(filled);
                    break;
                }
                Ok(n) => buf.truncate(filled + n),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => buf.truncate(filled),
                Err(error) => {
                    report(error);
                    return None;
                }
            }
        }
        match std::str::from_utf8(buf) {
            Ok(text) => Some(f(text)),
            Err(error) => {
                tracing::debug!("{} is not UTF-8: {error}", path.display());
                None
            }
        }
    })
}

/// Reads and parses one file; `None` on any failure, so that one bad file costs only its own
/// fields.
fn read_parsed<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T>) -> Option<T> {
    match read_with(path, parse)? {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::debug!("cannot parse {}: {error:#}", path.display());
            None
        }
    }
}

/// A container's cgroup: its directory in each hierarchy.
#[derive(Debug)]
pub struct ContainerCgroup {
    rel_path: String,
    members: Vec<Member>,
    /// Index in `members` of the directory in the primary hierarchy (see `Layout::primary`).
    primary: usize,
}

/// One sample of a container's counters; a field is `None` when its file was missing,
/// unreadable or garbled, or when the kernel keeps no such number.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// v1 cpuacct.usage; v2 cpu.stat usage_usec.
    pub cpu_usage_seconds: Option<f64>,
    /// v1 cpuacct.usage_user, else cpuacct.stat user (USER_HZ ticks); v2 cpu.stat user_usec.
    pub cpu_user_seconds: Option<f64>,
    /// v1 cpuacct.usage_sys, else cpuacct.stat system; v2 cpu.stat system_usec.
    pub cpu_system_seconds: Option<f64>,
    /// v1 memory.usage_in_bytes; v2 memory.current; processes: sum of resident memory.
    pub memory_usage_bytes: Option<u64>,
    /// Usage minus inactive file cache (v1 total_inactive_file, v2 inactive_file).
    pub memory_working_set_bytes: Option<u64>,
    /// v1 memory.stat total_rss (includes huge pages); v2 memory.stat anon; processes: sum of
    /// anonymous resident memory.
    pub memory_rss_bytes: Option<u64>,
    /// v1 memory.stat total_cache; v2 memory.stat file.
    pub memory_cache_bytes: Option<u64>,
    /// v1 memory.stat total_swap (else memsw usage minus usage); v2 memory.swap.current.
    /// `None` where the kernel accounts no swap.
    pub memory_swap_bytes: Option<u64>,
    /// v1 memory.max_usage_in_bytes; v2 memory.peak (Linux 5.19+).
    pub memory_max_usage_bytes: Option<u64>,
    /// The smallest memory limit of the container and its ancestors (v1
    /// memory.limit_in_bytes, v2 memory.max); `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// pids.current; without a pids controller, the tasks the cgroup lists.
    pub pids: Option<u64>,
    /// The smallest pids.max of the container and its ancestors; `None` when unlimited.
    pub pids_limit: Option<u64>,
    /// v1 blkio throttle service bytes, Read lines; v2 io.stat rbytes; summed over devices.
    pub blkio_read_bytes: Option<u64>,
    /// Likewise for writes (Write lines, wbytes).
    pub blkio_write_bytes: Option<u64>,
}

impl ContainerCgroup {
    /// Its cgroup path below the hierarchy root: the unified tree's if mounted, else the memory
    /// hierarchy's. This is the `cgroup` label.
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
    pub fn add_process(&self, pid: i32) -> Result<bool> {
        for member in &self.members {
            let procs = member.dir.join("cgroup.procs");
            match write_file(&procs, &pid.to_string()) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("moving process {pid} into {}", procs.display()));
                }
            }
        }
        Ok(true)
    }

    /// The pids currently in the container.
    pub fn procs(&self) -> Vec<i32> {
        self.read_procs().unwrap_or_default()
    }

    fn read_procs(&self) -> Option<Vec<i32>> {
        let member = self.members.get(self.primary)?;
        read_parsed(&member.dir.join("cgroup.procs"), parse::parse_ids)
    }

    /// The directory of the v1 hierarchy that holds `controller`.
    fn v1_member(&self, controller: &str) -> Option<&Member> {
        self.members.iter().find(|m| !m.v2 && m.has(controller))
    }

    /// The directory in the unified tree, if one is mounted.
    fn v2_member(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.v2)
    }

    /// The directory holding a controller's files: its v1 hierarchy (`v1_name`), else the v2
    /// directory if the controller (`v2_name`) is enabled there.
    fn controller_member(&self, v1_name: &str, v2_name: &str) -> Option<&Member> {
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

    /// One blocking sample. Every file is read on its own: a bad file leaves only its fields
    /// `None`.
    pub fn sample(&self) -> Stats {
        let mut stats = Stats::default();
        self.sample_cpu(&mut stats);
        self.sample_memory(&mut stats);
        self.sample_pids(&mut stats);
        self.sample_io(&mut stats);
        stats
    }

    /// A sample that reads only what can have changed. `previous` is the last full sample and
    /// the CPU probe's value then: when the probe reads the same CPU time now, none of the
    /// container's processes has run since (memory is charged, processes forked and I/O done
    /// by running tasks), so the other files are not read and `previous` stands. Returns the
    /// stats, the probe's value, and whether the files were read.
    pub fn sample_since(&self, previous: Option<(&Stats, u64)>) -> (Stats, Option<u64>, bool) {
        let mut stats = Stats::default();
        let probe = self.cpu_probe(&mut stats);
        if let (Some(now), Some((stats, then))) = (probe, previous)
            && now == then
        {
            return (stats.clone(), probe, false);
        }
        // On v2 the probe's file held the CPU times already.
        if stats.cpu_usage_seconds.is_none() {
            self.sample_cpu(&mut stats);
        }
        self.sample_memory(&mut stats);
        self.sample_pids(&mut stats);
        self.sample_io(&mut stats);
        (stats, probe, true)
    }

    /// The container's total CPU time in the kernel's own unit (v1 cpuacct.usage, ns; v2
    /// cpu.stat usage_usec): the cheapest sign of whether any of its processes ran. On v2 the
    /// file also gives the user and system times, which go into `stats`.
    fn cpu_probe(&self, stats: &mut Stats) -> Option<u64> {
        if let Some(member) = self.v1_member("cpuacct") {
            return read_parsed(&member.dir.join("cpuacct.usage"), parse::parse_u64);
        }
        let cpu = read_parsed(
            &self.v2_member()?.dir.join("cpu.stat"),
            parse::parse_v2_cpu_stat,
        )?;
        set_cpu_v2(&cpu, stats);
        cpu.usage_usec
    }

    fn sample_cpu(&self, stats: &mut Stats) {
        if let Some(member) = self.v1_member("cpuacct") {
            sample_cpu_v1(&member.dir, stats);
        } else if let Some(member) = self.v2_member() {
            // The kernel keeps cpu.stat's times in every v2 cgroup, with or without the cpu
            // controller.
            sample_cpu_v2(&member.dir, stats);
        }
    }

    fn sample_memory(&self, stats: &mut Stats) {
        match self.controller_member("memory", "memory") {
            Some(member) if member.v2 => sample_memory_v2(member, stats),
            Some(member) => sample_memory_v1(member, stats),
            None => self.sample_memory_from_processes(stats),
        }
    }

    /// Memory of the container's processes: usage and working set are the sum of their
    /// resident memory; rss is the sum of their anonymous resident memory (resident minus the
    /// file-backed and shmem pages statm calls shared), the same meaning as a cgroup's rss.
    /// Pages shared between processes count once per process. The kernel keeps no cache,
    /// swap, peak or limit for a set of processes: those stay `None`.
    fn sample_memory_from_processes(&self, stats: &mut Stats) {
        let Some(pids) = self.read_procs() else {
            return;
        };
        let page_size = procfs::page_size();
        let mut resident: u64 = 0;
        let mut anonymous: u64 = 0;
        for pid in pids {
            let path = PathBuf::from(format!("/proc/{pid}/statm"));
            // A process that exited since cgroup.procs was read simply counts no more.
            let Some(statm) = read_parsed(&path, parse::parse_statm) else {
                continue;
            };
            resident = resident.saturating_add(statm.resident_pages.saturating_mul(page_size));
            let anonymous_pages = statm.resident_pages.saturating_sub(statm.shared_pages);
            anonymous = anonymous.saturating_add(anonymous_pages.saturating_mul(page_size));
        }
        stats.memory_usage_bytes = Some(resident);
        stats.memory_working_set_bytes = Some(resident);
        stats.memory_rss_bytes = Some(anonymous);
    }

    fn sample_pids(&self, stats: &mut Stats) {
        if let Some(member) = self.controller_member("pids", "pids") {
            stats.pids = read_parsed(&member.dir.join("pids.current"), parse::parse_u64);
            stats.pids_limit = effective_limit(member, "pids.max");
            return;
        }
        // No pids controller: count the tasks (threads) the cgroup lists, which is what
        // pids.current counts. Every cgroup directory has this file in both versions.
        let Some(member) = self.members.get(self.primary) else {
            return;
        };
        let file = if member.v2 { "cgroup.threads" } else { "tasks" };
        let tasks = read_parsed(&member.dir.join(file), parse::parse_ids);
        stats.pids = tasks.map(|tasks| tasks.len() as u64);
    }

    fn sample_io(&self, stats: &mut Stats) {
        let bytes = match self.controller_member("blkio", "io") {
            Some(member) if member.v2 => {
                read_parsed(&member.dir.join("io.stat"), parse::parse_v2_io_stat)
            }
            Some(member) => read_v1_blkio(&member.dir),
            None => None,
        };
        stats.blkio_read_bytes = bytes.map(|b| b.read);
        stats.blkio_write_bytes = bytes.map(|b| b.write);
    }

    /// Removes the directories this container made, deepest first: its own directory in every
    /// hierarchy, then each `<parent>` it made if that is now empty. Fails while the container
    /// still holds processes (EBUSY), so that the caller retries later; a directory already
    /// gone counts as removed.
    pub fn remove(&self) -> Result<()> {
        let mut first_error = None;
        for member in &self.members {
            match fs::remove_dir(&member.dir) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    let busy = error.raw_os_error() == Some(libc::EBUSY);
                    let what = if busy {
                        "still holds processes or child cgroups"
                    } else {
                        "cannot be removed"
                    };
                    let error = anyhow!(error).context(format!("{} {what}", member.dir.display()));
                    first_error.get_or_insert(error);
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

fn nanoseconds_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn microseconds_to_seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// v1 cpuacct: all three times from cpuacct.usage_all (ns, Linux 4.7+: one file instead of
/// three, and the kernel walks the CPUs once); else cpuacct.usage (ns) with user and system from
/// cpuacct.usage_user/usage_sys (ns) or cpuacct.stat (USER_HZ ticks).
fn sample_cpu_v1(dir: &Path, stats: &mut Stats) {
    if let Some((user, system)) = read_parsed(
        &dir.join("cpuacct.usage_all"),
        parse::parse_v1_cpuacct_usage_all,
    ) {
        stats.cpu_usage_seconds = Some(nanoseconds_to_seconds(user.saturating_add(system)));
        stats.cpu_user_seconds = Some(nanoseconds_to_seconds(user));
        stats.cpu_system_seconds = Some(nanoseconds_to_seconds(system));
        return;
    }
    let usage = read_parsed(&dir.join("cpuacct.usage"), parse::parse_u64);
    let user = read_parsed(&dir.join("cpuacct.usage_user"), parse::parse_u64);
    let system = read_parsed(&dir.join("cpuacct.usage_sys"), parse::parse_u64);
    stats.cpu_usage_seconds = usage.map(nanoseconds_to_seconds);
    stats.cpu_user_seconds = user.map(nanoseconds_to_seconds);
    stats.cpu_system_seconds = system.map(nanoseconds_to_seconds);
    if user.is_some() && system.is_some() {
        return;
    }
    let Some(ticks) = read_parsed(&dir.join("cpuacct.stat"), parse::parse_v1_cpuacct_stat) else {
        return;
    };
    let ticks_per_second = procfs::ticks_per_second() as f64;
    let to_seconds = |ticks: u64| ticks as f64 / ticks_per_second;
    if stats.cpu_user_seconds.is_none() {
        stats.cpu_user_seconds = ticks.user_ticks.map(to_seconds);
    }
    if stats.cpu_system_seconds.is_none() {
        stats.cpu_system_seconds = ticks.system_ticks.map(to_seconds);
    }
}

/// v2 cpu.stat: usage_usec, user_usec, system_usec.
fn sample_cpu_v2(dir: &Path, stats: &mut Stats) {
    if let Some(cpu) = read_parsed(&dir.join("cpu.stat"), parse::parse_v2_cpu_stat) {
        set_cpu_v2(&cpu, stats);
    }
}

fn set_cpu_v2(cpu: &parse::V2CpuStat, stats: &mut Stats) {
    stats.cpu_usage_seconds = cpu.usage_usec.map(microseconds_to_seconds);
    stats.cpu_user_seconds = cpu.user_usec.map(microseconds_to_seconds);
    stats.cpu_system_seconds = cpu.system_usec.map(microseconds_to_seconds);
}

/// Usage minus the inactive file cache, which the kernel reclaims first (the working set as
/// cAdvisor and the kubelet define it).
fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    Some(usage?.saturating_sub(inactive_file?))
}

fn sample_memory_v1(member: &Member, stats: &mut Stats) {
    let dir = &member.dir;
    let usage = read_parsed(&dir.join("memory.usage_in_bytes"), parse::parse_u64);
    let stat =
        read_parsed(&dir.join("memory.stat"), parse::parse_v1_memory_stat).unwrap_or_default();
    stats.memory_usage_bytes = usage;
    stats.memory_working_set_bytes = working_set(usage, stat.inactive_file);
    stats.memory_rss_bytes = stat.rss;
    stats.memory_cache_bytes = stat.cache;
    stats.memory_swap_bytes = stat.swap.or_else(|| v1_swap_from_memsw(dir, usage));
    stats.memory_max_usage_bytes =
        read_parsed(&dir.join("memory.max_usage_in_bytes"), parse::parse_u64);
    stats.memory_limit_bytes = effective_limit(member, "memory.limit_in_bytes");
}

/// Swap from memory.memsw.usage_in_bytes (memory + swap) minus memory usage, for kernels whose
/// memory.stat lacks `total_swap`. The memsw files exist only when the kernel accounts swap.
/// The two files are read at slightly different times, hence the saturating subtraction.
fn v1_swap_from_memsw(dir: &Path, usage: Option<u64>) -> Option<u64> {
    let memsw = read_parsed(&dir.join("memory.memsw.usage_in_bytes"), parse::parse_u64)?;
    Some(memsw.saturating_sub(usage?))
}

fn sample_memory_v2(member: &Member, stats: &mut Stats) {
    let dir = &member.dir;
    let usage = read_parsed(&dir.join("memory.current"), parse::parse_u64);
    let stat =
        read_parsed(&dir.join("memory.stat"), parse::parse_v2_memory_stat).unwrap_or_default();
    stats.memory_usage_bytes = usage;
    stats.memory_working_set_bytes = working_set(usage, stat.inactive_file);
    stats.memory_rss_bytes = stat.anon;
    stats.memory_cache_bytes = stat.file;
    // memory.swap.current exists only when the kernel accounts swap.
    stats.memory_swap_bytes = read_parsed(&dir.join("memory.swap.current"), parse::parse_u64);
    // memory.peak exists since Linux 5.19.
    stats.memory_max_usage_bytes = read_parsed(&dir.join("memory.peak"), parse::parse_u64);
    stats.memory_limit_bytes = effective_limit(member, "memory.max");
}

/// The limit that really applies to a container: the smallest of its own and its ancestors'
/// up to the hierarchy's mount point (a nested container lives under its job's limit).
/// `None` when unlimited everywhere, or when the container's own file cannot be read.
fn effective_limit(member: &Member, file: &str) -> Option<u64> {
    let own = read_parsed(&member.dir.join(file), parse::parse_limit)?;
    let above = match member.dir.parent() {
        Some(parent) if member.dir != member.mount_point => {
            ancestors_limit(parent, &member.mount_point, file)
        }
        _ => None,
    };
    match (own, above) {
        (Some(own), Some(above)) => Some(own.min(above)),
        (own, above) => own.or(above),
    }
}

/// How long the ancestors' smallest limit is reused. Every container under a job shares its
/// ancestors: with 1,000 containers, walking up for each one read the same few files 1,000
/// times per pass (on the bench, 6 of the 16 files a pass opened per container). An ancestor's
/// new limit shows within this time; a container's own limit is read at every pass.
const ANCESTORS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

type AncestorCache = std::collections::BTreeMap<PathBuf, (std::time::Instant, Option<u64>)>;

static ANCESTORS: std::sync::Mutex<AncestorCache> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The smallest `file` limit of `dir` and its ancestors up to `mount_point`; `None` when
/// unlimited (or unreadable) everywhere.
fn ancestors_limit(dir: &Path, mount_point: &Path, file: &str) -> Option<u64> {
    let key = dir.join(file);
    let now = std::time::Instant::now();
    let mut cache = ANCESTORS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, limit)) = cache.get(&key)
        && now.duration_since(*at) < ANCESTORS_TTL
    {
        return *limit;
    }
    let mut limit: Option<u64> = None;
    let mut dir = dir;
    while dir.starts_with(mount_point) {
        // The root has no limit files (v2, v1 pids): nothing to add there.
        if let Some(Some(ancestor)) = read_parsed(&dir.join(file), parse::parse_limit) {
            limit = Some(limit.map_or(ancestor, |l| l.min(ancestor)));
        }
        if dir == mount_point {
            break;
        }
        let Some(parent) = dir.parent() else {
            break;
        };
        dir = parent;
    }
    // Entries of jobs that are gone would pile up: drop the stale ones now and then.
    if cache.len() >= 256 {
        cache.retain(|_, (at, _)| now.duration_since(*at) < ANCESTORS_TTL);
    }
    cache.insert(key, (now, limit));
    limit
}

/// v1 blkio bytes, from the first of these files that reads and parses. The plain
/// blkio.io_service_bytes_recursive exists only with the CFQ scheduler (gone since Linux 5.0).
/// Caveat seen on Linux 6.18: the throttle counters of a device stay 0 until a throttle rule
/// has been set for that device in some cgroup (blk-throttle sets itself up for a disk on its
/// first rule, and keeps counting afterwards even when that rule's cgroup is gone).
fn read_v1_blkio(dir: &Path) -> Option<IoBytes> {
    const FILES: [&str; 3] = [
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.throttle.io_service_bytes",
        "blkio.io_service_bytes_recursive",
    ];
    FILES
        .iter()
        .find_map(|file| read_parsed(&dir.join(file), parse::parse_v1_blkio))
}

#[cfg(test)]
mod tests;
