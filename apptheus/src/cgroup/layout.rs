//! The host's cgroup hierarchies, found in /proc/self/mountinfo and never assumed, and the
//! mapping between cgroup paths (as /proc/<pid>/cgroup writes them) and directories.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{Error, parse};

/// The v1 controllers the daemon uses; a v1 hierarchy with none of them is ignored.
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];

/// Bounds the directory walks of `open` and `list`: cgroup trees are shallow, and a bound keeps
/// a pathological tree from recursing without end.
const MAX_WALK_DEPTH: usize = 32;
/// Longest cgroup path of a launcher that is taken, in bytes. A user names the directories of a
/// cgroup delegated to them, and the path goes into the state file, the labels and the log
/// lines of every container made there: batch systems' paths are a few dozen bytes (Slurm,
/// systemd scopes, Kubernetes pods: under 250).
pub const MAX_CGROUP_PATH: usize = 512;
/// Most of a /proc/<pid>/cgroup that is read (a line per hierarchy, each path bounded above).
const MAX_PROC_CGROUP: u64 = 64 << 10;

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

/// The cgroup version of one hierarchy: what its files are called and how they read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mounted hierarchy the daemon uses.
#[derive(Clone, Debug)]
pub(super) struct Hierarchy {
    pub version: Version,
    /// The controllers of a v1 hierarchy that the daemon uses (a subset of `V1_CONTROLLERS`);
    /// empty for the unified tree.
    /// Shared with the hierarchy's container directories (one copy however many there are).
    pub controllers: Arc<[String]>,
    pub mount_point: Arc<Path>,
    /// The cgroup path that `mount_point` shows (mountinfo's root field): "/" unless only a
    /// sub-tree is mounted, as in a container without a cgroup namespace.
    pub root: String,
}

impl Hierarchy {
    pub fn v2(&self) -> bool {
        self.version == Version::V2
    }

    /// A short name for messages: "cgroup2" or the v1 controllers, e.g. "cpu,cpuacct".
    pub fn name(&self) -> String {
        match self.version {
            Version::V2 => "cgroup2".to_string(),
            Version::V1 => self.controllers.join(","),
        }
    }

    /// The directory of cgroup path `rel` (a path as /proc/<pid>/cgroup writes it).
    pub fn dir_of(&self, rel: &str) -> Result<PathBuf, Error> {
        if !rel.starts_with('/') || rel.split('/').any(|part| part == "." || part == "..") {
            return Err(Error::Invalid(format!(
                "cgroup path {rel:?} is not a plain absolute path"
            )));
        }
        let below = if self.root == "/" {
            rel
        } else {
            rel.strip_prefix(self.root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "cgroup path {rel:?} is outside the part {:?} of the {} hierarchy mounted at {}",
                        self.root,
                        self.name(),
                        self.mount_point.display()
                    ))
                })?
        };
        let below = below.trim_start_matches('/');
        if below.is_empty() {
            return Ok(self.mount_point.to_path_buf());
        }
        Ok(self.mount_point.join(below))
    }

    /// The cgroup path of a directory below the mount point (the inverse of `dir_of`).
    pub fn rel_of(&self, dir: &Path) -> Option<String> {
        let below = dir.strip_prefix(&self.mount_point).ok()?.to_str()?;
        if below.is_empty() {
            return Some(self.root.clone());
        }
        Some(join_rel(&self.root, below))
    }

    /// The path of this hierarchy's cgroup among the lines of a /proc/<pid>/cgroup.
    pub fn path_in<'a>(&self, entries: &'a [parse::ProcCgroup]) -> Result<&'a str, Error> {
        let entry = match self.version {
            Version::V2 => entries
                .iter()
                .find(|entry| entry.hierarchy_id == 0 && entry.controllers.is_empty()),
            // Each controller belongs to one hierarchy, so one shared name identifies it.
            Version::V1 => entries.iter().find(|entry| {
                entry
                    .controllers
                    .iter()
                    .any(|controller| self.controllers.contains(controller))
            }),
        };
        entry
            .map(|entry| entry.path.as_str())
            .ok_or_else(|| Error::Invalid(format!("no line for the {} hierarchy", self.name())))
    }
}

/// The cgroup hierarchies of this host, detected from /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The v1 hierarchies in mountinfo order, then the unified tree if mounted.
    pub(super) hierarchies: Vec<Hierarchy>,
    /// Launchers' cgroups lately seen crowded (shared by the clones).
    pub(super) crowded: Arc<Crowded>,
}

/// Launchers' cgroups seen holding many processes besides a container's, taken to hold others
/// still for a second without reading them again. On v1 a read of `cgroup.procs` makes the
/// kernel list and sort every process of the cgroup under one lock: with a burst of
/// launchers in one cgroup (a login session's, a bench's), each admission read all the others,
/// and admitting N cost O(N²) (10,000 took 97 s here, 6,000 16 s). A cgroup that held more
/// than `CROWDED` others a second ago is most unlikely to hold only a newcomer's tree now, and
/// if it did, the container gets a cgroup inside it: measured as exactly, only not adopted.
#[derive(Debug, Default)]
pub(super) struct Crowded(parking_lot::Mutex<foldhash::HashMap<PathBuf, Instant>>);

/// Other processes beyond which a cgroup is remembered as crowded.
pub(super) const CROWDED: usize = 64;
const CROWDED_FOR: Duration = Duration::from_secs(1);
/// Entries kept at most (a host has few such cgroups; the bound is for a hostile one).
const CROWDED_MAX: usize = 1024;

impl Crowded {
    /// Whether `dir` was seen crowded within the last `CROWDED_FOR`.
    pub(super) fn recent(&self, dir: &Path) -> bool {
        self.0
            .lock()
            .get(dir)
            .is_some_and(|at| at.elapsed() < CROWDED_FOR)
    }

    pub(super) fn note(&self, dir: PathBuf) {
        let mut seen = self.0.lock();
        if seen.len() >= CROWDED_MAX {
            seen.retain(|_, at| at.elapsed() < CROWDED_FOR);
            if seen.len() >= CROWDED_MAX {
                return;
            }
        }
        seen.insert(dir, Instant::now());
    }
}

impl Layout {
    /// Detects the layout from /proc/self/mountinfo.
    pub fn detect() -> Result<Layout, Error> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        Layout::from_mountinfo(&text)
            .map_err(|e| Error::Invalid(format!("parsing {}: {e}", path.display())))
    }

    /// The layout that a mountinfo text describes.
    pub fn from_mountinfo(text: &str) -> Result<Layout, Error> {
        let mounts = parse::parse_mountinfo(text).map_err(|e| Error::Invalid(format!("{e:#}")))?;
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
                version: if mount.v2 { Version::V2 } else { Version::V1 },
                controllers: controllers.into(),
                mount_point: Path::new(&mount.mount_point).into(),
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
        hierarchies.sort_by_key(Hierarchy::v2);
        if hierarchies.is_empty() {
            return Err(Error::Invalid(format!(
                "no cgroup hierarchy is mounted: neither cgroup2 nor a v1 hierarchy with one of {}",
                V1_CONTROLLERS.join(", ")
            )));
        }
        Ok(Layout {
            hierarchies,
            crowded: Arc::default(),
        })
    }

    pub fn mode(&self) -> Mode {
        let v1 = self.hierarchies.iter().any(|h| !h.v2());
        let v2 = self.hierarchies.iter().any(Hierarchy::v2);
        match (v1, v2) {
            (true, true) => Mode::Hybrid,
            (true, false) => Mode::V1,
            _ => Mode::V2,
        }
    }

    /// Where the unified (v2) tree is mounted, if it is: below it every container has a
    /// directory the network programs count for.
    pub fn unified_mount(&self) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|h| h.v2())
            .map(|h| &*h.mount_point)
    }

    /// The mount points of the hierarchies the daemon uses (for messages and diagnostics).
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.mount_point.to_path_buf())
            .collect()
    }

    /// The hierarchy whose path names a container: the v1 memory hierarchy where there is one
    /// (on a hybrid host the numbers come from v1, and batch systems place jobs there), else the
    /// unified tree, else the first one.
    pub(super) fn primary(&self) -> usize {
        let position =
            |wanted: &dyn Fn(&Hierarchy) -> bool| self.hierarchies.iter().position(wanted);
        position(&|h| h.controllers.iter().any(|c| c == "memory"))
            .or_else(|| position(&Hierarchy::v2))
            .unwrap_or(0)
    }

    /// The paths (as `ContainerCgroup::rel_path` gives them) of the existing directories named
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

/// The cgroups a launcher was in when it connected: the base of a nested container.
#[derive(Clone, Debug)]
pub struct Launcher {
    entries: Vec<parse::ProcCgroup>,
}

impl Layout {
    /// The cgroups of process `pid` (read from /proc by number: the caller checks afterwards
    /// that its pidfd still shows the same process alive).
    pub fn launcher(&self, pid: i32) -> Result<Launcher, Error> {
        let entries = read_cgroup_file(&cgroup_file_of_live_thread(pid))?;
        check_launcher_paths(&entries)?;
        Ok(Launcher { entries })
    }

    /// The launcher's cgroup path in each hierarchy that has a line for it.
    pub fn launcher_paths(&self, launcher: &Launcher) -> Vec<(String, PathBuf)> {
        self.hierarchies
            .iter()
            .filter_map(|h| {
                let rel = h.path_in(&launcher.entries).ok()?;
                Some((rel.to_string(), h.dir_of(rel).ok()?))
            })
            .collect()
    }
}

impl Launcher {
    #[cfg(test)]
    pub(super) fn from_entries(entries: Vec<parse::ProcCgroup>) -> Launcher {
        Launcher { entries }
    }

    /// Its cgroup path in `hierarchy`.
    pub(super) fn path_in(&self, hierarchy: &Hierarchy) -> Result<&str, Error> {
        hierarchy.path_in(&self.entries)
    }
}

/// A launcher's cgroup paths are a user's words: refuse one longer than `MAX_CGROUP_PATH` or
/// with control characters, and a hierarchy listed twice (a directory name with a line break
/// in it makes /proc/<pid>/cgroup show a line of the user's choosing).
fn check_launcher_paths(entries: &[parse::ProcCgroup]) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        if e.path.len() > MAX_CGROUP_PATH || e.path.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "the launcher's cgroup path is longer than {MAX_CGROUP_PATH} bytes or has control characters"
            )));
        }
        if !seen.insert(e.hierarchy_id) {
            return Err(Error::Invalid(format!(
                "the launcher's /proc cgroup list names hierarchy {} twice (a cgroup name with a line break?)",
                e.hierarchy_id
            )));
        }
    }
    Ok(())
}

/// Calls `visit` for every directory below `dir` (not `dir` itself), depth first.
pub(super) fn walk_dirs(dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path)) {
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
pub(super) fn join_rel(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// The last `count` components of a cgroup path, joined by '/'.
pub(super) fn last_components(rel: &str, count: usize) -> Option<String> {
    let parts: Vec<&str> = rel.split('/').filter(|part| !part.is_empty()).collect();
    if parts.len() < count {
        return None;
    }
    Some(parts[parts.len() - count..].join("/"))
}

/// A directory name we are about to create must be one plain path component.
pub(super) fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(Error::Invalid(format!("{name:?} is not a directory name")));
    }
    if name.contains(['/', '\0', '\n']) {
        return Err(Error::Invalid(format!(
            "{name:?} must be a single directory name (no '/', NUL or newline)"
        )));
    }
    Ok(())
}

/// The cgroups of process `pid`, as /proc/<pid>/cgroup lists them.
pub(super) fn read_proc_cgroup(pid: i32) -> Result<Vec<parse::ProcCgroup>, Error> {
    read_cgroup_file(Path::new(&format!("/proc/{pid}/cgroup")))
}

/// The /proc cgroup file of a live thread of `pid`: its leader's, unless the leader has exited
/// while other threads run on. An exited leader shows `/` in v1 hierarchies, which would put
/// the container at the hierarchy's root, out of its job's limits.
fn cgroup_file_of_live_thread(pid: i32) -> PathBuf {
    let leader = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let exited = |tid: &str| {
        fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).is_ok_and(|stat| {
            stat.rfind(')')
                .and_then(|at| stat[at..].chars().nth(2))
                .is_some_and(|state| matches!(state, 'Z' | 'X'))
        })
    };
    if !exited(&pid.to_string()) {
        return leader;
    }
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|tid| !exited(tid))
        .map_or(leader, |tid| {
            PathBuf::from(format!("/proc/{pid}/task/{tid}/cgroup"))
        })
}

fn read_cgroup_file(path: &Path) -> Result<Vec<parse::ProcCgroup>, Error> {
    use std::io::Read as _;
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_PROC_CGROUP).read_to_string(&mut text))
        .map_err(|e| Error::io("reading", path, e))?;
    parse::parse_proc_cgroup(&text)
        .map_err(|e| Error::Invalid(format!("parsing {}: {e:#}", path.display())))
}
