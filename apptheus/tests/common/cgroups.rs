//! The machine's cgroups as the tests see them, in whatever layout it has: v1 or hybrid (this
//! project's hosts: v1 controllers under /sys/fs/cgroup/<ctrl>, a unified tree beside them) or
//! pure v2 (the VM guests, most HPC sites: one tree at /sys/fs/cgroup). Found in
//! /proc/self/mountinfo, never assumed.
use std::path::{Path, PathBuf};

use super::eventually;

/// How the machine mounts its cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// v1 controllers only.
    V1,
    /// v1 controllers and a unified tree beside them.
    Hybrid,
    /// Only the unified tree.
    V2,
}

/// One mounted hierarchy: a v1 one with its controllers, or the unified tree (no controllers
/// listed: they are in its cgroup.controllers).
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub v2: bool,
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
}

/// The cgroup hierarchies mounted (each once: the first mount of a hierarchy).
pub fn hierarchies() -> Vec<Hierarchy> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in info.lines() {
        // id parent major:minor root mount-point options ... - fstype source super-options
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let fstype = fields.get(sep + 1).copied().unwrap_or_default();
        let h = match fstype {
            "cgroup2" => Hierarchy {
                v2: true,
                controllers: Vec::new(),
                mount_point: PathBuf::from(fields[4]),
            },
            "cgroup" => Hierarchy {
                v2: false,
                controllers: fields
                    .get(sep + 3)
                    .copied()
                    .unwrap_or_default()
                    .split(',')
                    .filter(|o| !["rw", "ro"].contains(o) && !o.contains('='))
                    .map(str::to_owned)
                    .collect(),
                mount_point: PathBuf::from(fields[4]),
            },
            _ => continue,
        };
        let same = |o: &Hierarchy| o.v2 == h.v2 && o.controllers == h.controllers;
        if !out.iter().any(same) {
            out.push(h);
        }
    }
    out
}

pub fn mode() -> Mode {
    let hs = hierarchies();
    let v1 = hs.iter().any(|h| !h.v2);
    let v2 = hs.iter().any(|h| h.v2);
    match (v1, v2) {
        (true, true) => Mode::Hybrid,
        (true, false) => Mode::V1,
        (false, true) => Mode::V2,
        (false, false) => panic!("no cgroup hierarchy is mounted (see /proc/self/mountinfo)"),
    }
}

/// The unified tree's mount point, where one is mounted.
pub fn unified() -> Option<PathBuf> {
    hierarchies()
        .into_iter()
        .find(|h| h.v2)
        .map(|h| h.mount_point)
}

/// The mount point of the hierarchy that holds `controller`: its v1 hierarchy, else the
/// unified tree ("" names the unified tree itself).
pub fn mount_of(controller: &str) -> PathBuf {
    let hs = hierarchies();
    if !controller.is_empty()
        && let Some(h) = hs
            .iter()
            .find(|h| !h.v2 && h.controllers.iter().any(|c| c == controller))
    {
        return h.mount_point.clone();
    }
    hs.into_iter()
        .find(|h| h.v2)
        .map(|h| h.mount_point)
        .unwrap_or_else(|| {
            panic!("no hierarchy holds {controller:?}: neither a v1 one nor a unified tree")
        })
}

/// Whether `controller` is a v2 one here (no v1 hierarchy holds it).
pub fn is_v2(controller: &str) -> bool {
    mount_of(controller) == unified().unwrap_or_default()
}

/// The cgroup of `pid` in the hierarchy that holds `controller`: its v1 hierarchy's line of
/// /proc/<pid>/cgroup, else the unified tree's (`0::`); "" names the unified tree.
pub fn cgroup_of(pid: i32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((ctrls, path))
        })
        .collect();
    let v1 = (!controller.is_empty())
        .then(|| {
            lines
                .iter()
                .find(|(ctrls, _)| ctrls.split(',').any(|c| c == controller))
        })
        .flatten();
    v1.or_else(|| lines.iter().find(|(ctrls, _)| ctrls.is_empty()))
        .map(|(_, path)| path.to_string())
}

/// The directory of cgroup path `rel` in the hierarchy that holds `controller`.
pub fn dir_of(controller: &str, rel: &str) -> PathBuf {
    mount_of(controller).join(rel.trim_start_matches('/'))
}

/// The pids in a cgroup directory.
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A file of a cgroup directory, trimmed ("" when missing).
pub fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A cgroup the test makes for a launcher to start in (a batch job's cgroup, in miniature):
/// one directory of a unique name in each hierarchy that holds one of the controllers asked
/// for. On a pure v2 machine that is one directory; on a v1 or hybrid host one per v1
/// hierarchy (and one in the unified tree when "" is asked for). Its limits are set through
/// the version's own files. Removed, with whatever is left inside, when dropped.
pub struct TestCgroup {
    pub name: String,
    dirs: Vec<PathBuf>,
}

impl TestCgroup {
    pub fn new(tag: &str, controllers: &[&str]) -> TestCgroup {
        super::require_root();
        let name = super::unique(tag);
        let mut cg = TestCgroup {
            name,
            dirs: Vec::new(),
        };
        for c in controllers {
            let dir = dir_of(c, &cg.name);
            if cg.dirs.contains(&dir) {
                continue;
            }
            if !c.is_empty() && is_v2(c) {
                // A v2 controller shows in a child only when the parent enables it.
                let parent = dir.parent().expect("a cgroup's parent");
                let enabled = read(parent, "cgroup.subtree_control");
                assert!(
                    enabled.split_whitespace().any(|e| e == *c),
                    "the {c} controller is not enabled in {}/cgroup.subtree_control ({enabled:?}): the test cannot make a cgroup with it",
                    parent.display()
                );
            }
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            cg.dirs.push(dir);
        }
        cg
    }

    /// Its cgroup path ("/<name>", the same in every hierarchy).
    pub fn rel(&self) -> String {
        format!("/{}", self.name)
    }

    /// Its directory in the hierarchy of `controller`.
    pub fn dir(&self, controller: &str) -> PathBuf {
        let dir = dir_of(controller, &self.name);
        assert!(
            self.dirs.contains(&dir),
            "{} was not made for {controller:?}",
            dir.display()
        );
        dir
    }

    /// Its directories, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn write(&self, controller: &str, file: &str, value: &str) {
        let path = self.dir(controller).join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// A memory limit, swap included (where the kernel accounts swap) so that the limit is hit
    /// rather than swapped around.
    pub fn limit_memory(&self, bytes: u64) {
        let dir = self.dir("memory");
        if is_v2("memory") {
            self.write("memory", "memory.max", &bytes.to_string());
            if dir.join("memory.swap.max").exists() {
                self.write("memory", "memory.swap.max", "0");
            }
        } else {
            self.write("memory", "memory.limit_in_bytes", &bytes.to_string());
            if dir.join("memory.memsw.limit_in_bytes").exists() {
                self.write("memory", "memory.memsw.limit_in_bytes", &bytes.to_string());
            }
        }
    }

    /// A CFS quota of `quota_us` per 100 ms period.
    pub fn limit_cpu(&self, quota_us: u64) {
        if is_v2("cpu") {
            self.write("cpu", "cpu.max", &format!("{quota_us} 100000"));
        } else {
            self.write("cpu", "cpu.cfs_period_us", "100000");
            self.write("cpu", "cpu.cfs_quota_us", &quota_us.to_string());
        }
    }

    pub fn limit_pids(&self, n: u64) {
        self.write("pids", "pids.max", &n.to_string());
    }

    /// Shell commands that move the shell into every directory of it (then it execs the
    /// launcher).
    pub fn enter_script(&self) -> String {
        self.dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display()))
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The launcher was just stopped: its last tasks may take a moment to leave.
        let gone = eventually(std::time::Duration::from_secs(5), || {
            self.dirs.iter().for_each(|d| super::remove_cgroup_tree(d));
            self.dirs.iter().all(|d| !d.exists()).then_some(())
        });
        if gone.is_none() {
            eprintln!("test cgroups left behind: {:?}", self.dirs);
        }
    }
}
