//! Tests on the host's real cgroups, with a `sleep` child as the container's process.
//!
//! Memory and CPU time are charged to the cgroup a task is in when it uses them: moving a
//! process does not move what it used before (v2 never moves memory charges, v1 only with the
//! deprecated memory.move_charge_at_immigrate). So the child starts as a shell that waits on
//! its stdin, and only once moved execs `sleep`, whose fresh memory and CPU time are the
//! container's.
//!
//! They need root, and fail (never skip) without it. Every directory they make has a name unique
//! to the test run (`apptheus-test-<pid>-<n>-...`), and a guard removes them, and kills the
//! child, even when an assertion fails.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use std::{fs, path::PathBuf};

use super::{
    super::pidfd::{Pidfd, Process},
    files::write as write_file,
    layout::{join_rel, read_proc_cgroup},
    *,
};

/// `pid`, held by a pidfd.
fn held(pid: i32) -> Process {
    Process::new(pid, Pidfd::open(pid).unwrap().unwrap())
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (nor another run) uses.
fn unique(tag: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("apptheus-test-{}-{n}-{tag}", std::process::id())
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates cgroups on the host and needs root: run the tests as root"
    );
}

/// Kills the child and removes the test's directories, deepest (last pushed) first, whatever
/// happens in the test.
struct Guard {
    child: Option<Child>,
    pid: i32,
    dirs: Vec<PathBuf>,
}

impl Guard {
    fn spawn_sleep() -> Guard {
        let child = Command::new("sh")
            .args(["-c", "read line; exec sleep 600"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawning sh");
        let pid = child.id() as i32;
        Guard {
            child: Some(child),
            pid,
            dirs: Vec::new(),
        }
    }

    /// Remembers a container's directories, each `<parent>` before its container directory.
    fn track(&mut self, container: &ContainerCgroup) {
        for member in &container.members {
            self.dirs.extend(member.created_parent.clone());
            self.dirs.push(member.dir.clone());
        }
    }

    /// Lets the waiting shell exec `sleep`, and waits until it has.
    fn exec_sleep(&mut self) {
        let child = self.child.as_mut().unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let comm = format!("/proc/{}/comm", self.pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(&comm).unwrap() != "sleep\n" {
            assert!(Instant::now() < deadline, "the child did not exec sleep");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child by its pid and reaps it.
    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill_child();
        for dir in self.dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Checks that /proc/<pid>/cgroup names the container's directory in every hierarchy.
fn assert_member(container: &ContainerCgroup, layout: &Layout, pid: i32) {
    let entries = read_proc_cgroup(pid).unwrap();
    assert_eq!(container.members.len(), layout.hierarchies.len());
    for (member, hierarchy) in container.members.iter().zip(&layout.hierarchies) {
        assert_eq!(
            hierarchy.path_in(&entries).unwrap(),
            member.rel,
            "hierarchy {}",
            hierarchy.name()
        );
    }
    assert!(container.procs().contains(&pid));
}

/// The numbers this host must give for a container holding one live `sleep`.
fn assert_sample(container: &ContainerCgroup) -> Stats {
    let stats = Reader::new().sample(container);
    let (cpu, memory) = (
        stats.cpu.unwrap_or_default(),
        stats.memory.unwrap_or_default(),
    );
    assert!(cpu.usage_seconds.is_some(), "{stats:?}");
    assert!(cpu.user_seconds.is_some(), "{stats:?}");
    assert!(cpu.system_seconds.is_some(), "{stats:?}");
    assert!(memory.usage_bytes.is_some_and(|b| b > 0), "{stats:?}");
    assert!(memory.working_set_bytes.is_some(), "{stats:?}");
    assert!(memory.rss_bytes.is_some(), "{stats:?}");
    // sleep has one thread.
    assert_eq!(stats.pids.and_then(|p| p.current), Some(1), "{stats:?}");
    stats
}

/// Removes the container once its process is gone. The kernel may take a moment after the
/// reap to let go of the cgroup, hence a few tries.
fn remove_after_exit(container: &ContainerCgroup) {
    let mut result = container.remove();
    for _ in 0..20 {
        if result.is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
        result = container.remove();
    }
    result.unwrap();
    for dir in container.dirs() {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    for member in &container.members {
        if let Some(parent) = &member.created_parent {
            assert!(!parent.exists(), "{} is still there", parent.display());
        }
    }
}

/// The probe stays open between reads, follows the counter, and lets go of a cgroup removed
/// behind the daemon's back (a batch system removing its job's cgroup): the read fails
/// (ENODEV), the file is closed, and the probe reads as missing.
#[test]
fn the_probe_stays_open_and_lets_go_of_a_removed_cgroup() {
    require_root();
    let layout = Layout::detect().unwrap();
    let mut guard = Guard::spawn_sleep();
    let parent = unique("probe");
    let id = format!("sleep_{}", guard.pid);
    let container = layout.create(None, &parent, &id, &[]).unwrap();
    guard.track(&container);
    let mut reader = Reader::new();
    let empty = reader.probe(&container);
    assert!(empty.value.is_some(), "{empty:?}");
    assert!(container.probe.is_open());
    // The same descriptor sees the new value: a process ran in the cgroup since.
    container.add_process(&held(guard.pid)).unwrap();
    guard.exec_sleep();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = reader.probe(&container);
        assert!(container.probe.is_open());
        if now.value > empty.value {
            break;
        }
        assert!(Instant::now() < deadline, "the probe never moved: {now:?}");
        thread::sleep(Duration::from_millis(20));
    }
    guard.kill_child();
    let deadline = Instant::now() + Duration::from_secs(10);
    for member in &container.members {
        while let Err(e) = fs::remove_dir(&member.dir) {
            assert!(Instant::now() < deadline, "{}: {e}", member.dir.display());
            thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(reader.probe(&container).value, None);
    assert!(!container.probe.is_open());
    // Gone already counts as removed.
    container.remove().unwrap();
}

#[test]
fn dedicated_container_on_the_host() {
    require_root();
    let layout = Layout::detect().unwrap();
    let mut guard = Guard::spawn_sleep();
    let pid = guard.pid;
    let parent = unique("dedicated");
    let id = format!("sleep_{pid}");
    let container = layout.create(None, &parent, &id, &[]).unwrap();
    guard.track(&container);
    for (member, hierarchy) in container.members.iter().zip(&layout.hierarchies) {
        let expected = join_rel(&join_rel(&hierarchy.root, &parent), &id);
        assert_eq!(member.rel, expected);
        assert!(member.dir.is_dir());
        assert!(member.created_parent.is_some());
    }

    assert_eq!(container.add_process(&held(pid)).unwrap(), Moved::Done);
    assert_member(&container, &layout, pid);
    guard.exec_sleep();
    assert_sample(&container);

    // Where the unified tree has no memory controller (this module's hybrid hosts), its
    // directory alone must fall back to the process numbers.
    let unified = container
        .members
        .iter()
        .find(|m| m.version == Version::V2 && !m.has("memory") && !m.has("pids"));
    if let Some(unified) = unified {
        let view = ContainerCgroup {
            rel_path: unified.rel.clone(),
            members: vec![unified.clone()],
            primary: 0,
            probe: Default::default(),
        };
        assert_eq!(view.memory_source(), Source::Processes);
        assert_eq!(view.pids_source(), Source::Processes);
        let stats = assert_sample(&view);
        assert_eq!(stats.memory.and_then(|m| m.limit_bytes), None);
    }

    // Still busy: the caller must retry later.
    assert!(container.remove().is_err());
    assert!(container.dirs().iter().all(|d| d.is_dir()));

    // A process that exited is never written (its pid may be another's by now).
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id() as i32;
    let gone_held = held(gone_pid);
    gone.wait().unwrap();
    assert_eq!(container.add_process(&gone_held).unwrap(), Moved::Gone);

    guard.kill_child();
    remove_after_exit(&container);
}

#[test]
fn nested_container_on_the_host() {
    require_root();
    let layout = Layout::detect().unwrap();
    let mut guard = Guard::spawn_sleep();
    let pid = guard.pid;

    // The launcher's cgroup: a base made by the test in every hierarchy, with another name in
    // the unified tree so that the paths differ between hierarchies as they do on real hybrid
    // hosts (e.g. a Slurm job's memory cgroup versus a systemd scope).
    let tag = unique("base");
    let mut bases = Vec::new();
    for hierarchy in &layout.hierarchies {
        let name = if hierarchy.v2() {
            format!("{tag}-v2")
        } else {
            tag.clone()
        };
        let rel = join_rel(&hierarchy.root, &name);
        let dir = hierarchy.dir_of(&rel).unwrap();
        fs::create_dir(&dir).unwrap();
        guard.dirs.push(dir.clone());
        write_file(&dir.join("cgroup.procs"), &pid.to_string()).unwrap();
        bases.push((rel, dir));
    }
    // Limits of the "job", which the container must report as its effective ones.
    const MEMORY_LIMIT: u64 = 256 << 20;
    const PIDS_LIMIT: u64 = 4096;
    for (hierarchy, (_, dir)) in layout.hierarchies.iter().zip(&bases) {
        let (memory_file, pids_file) = if hierarchy.v2() {
            ("memory.max", "pids.max")
        } else {
            ("memory.limit_in_bytes", "pids.max")
        };
        for (file, limit) in [(memory_file, MEMORY_LIMIT), (pids_file, PIDS_LIMIT)] {
            let path = dir.join(file);
            if path.exists() {
                write_file(&path, &limit.to_string()).unwrap();
            }
        }
    }

    let id = format!("sleep_{pid}");
    // No members given: the base is not the container's alone, so it gets a directory inside.
    let launcher = layout.launcher(pid).unwrap();
    let container = layout
        .create(Some(&launcher), "apptheus", &id, &[])
        .unwrap();
    guard.track(&container);
    for (member, (base_rel, base_dir)) in container.members.iter().zip(&bases) {
        assert_eq!(member.rel, join_rel(base_rel, &format!("apptheus/{id}")));
        assert_eq!(member.dir, base_dir.join("apptheus").join(&id));
        assert!(member.dir.is_dir());
    }

    assert_eq!(container.add_process(&held(pid)).unwrap(), Moved::Done);
    assert_member(&container, &layout, pid);
    guard.exec_sleep();
    let stats = assert_sample(&container);
    if container.memory_source() == Source::Cgroup {
        assert_eq!(stats.memory.and_then(|m| m.limit_bytes), Some(MEMORY_LIMIT));
    }
    if container.pids_source() == Source::Cgroup {
        assert_eq!(stats.pids.and_then(|p| p.limit), Some(PIDS_LIMIT));
    }

    // A restarted daemon finds every directory again from the label alone.
    let reopened = layout
        .open(container.rel_path(), &container.made_parents(), &[])
        .unwrap();
    assert_eq!(reopened.dirs(), container.dirs());
    assert_eq!(reopened.made_parents(), container.made_parents());
    assert!(!container.made_parents().is_empty());
    assert_eq!(reopened.rel_path(), container.rel_path());
    assert_eq!(reopened.memory_source(), container.memory_source());
    assert!(
        layout
            .list("apptheus")
            .contains(&container.rel_path().to_string())
    );

    guard.kill_child();
    remove_after_exit(&container);
    // The bases are the test's, not the container's: still there until the guard goes.
    for (_, dir) in &bases {
        assert!(dir.is_dir());
    }
}

/// `remove_within` tries again while the kernel reports the container busy: with a live process
/// inside it gives up after its time, busy; once the process is killed it succeeds as soon as
/// the process is out, reaped or not (a batch system rmdirs the job's cgroup right then).
#[test]
fn remove_within_waits_for_the_last_process_to_leave() {
    require_root();
    let layout = Layout::detect().unwrap();
    let mut guard = Guard::spawn_sleep();
    let pid = guard.pid;
    let parent = unique("remove-within");
    let container = layout
        .create(None, &parent, &format!("sleep_{pid}"), &[])
        .unwrap();
    guard.track(&container);
    assert_eq!(container.add_process(&held(pid)).unwrap(), Moved::Done);
    let start = Instant::now();
    let error = container
        .remove_within(Duration::from_millis(50))
        .unwrap_err();
    assert!(error.is_busy(), "{error}");
    assert!(start.elapsed() >= Duration::from_millis(50));
    // Killed, not reaped yet: the removal waits for it to leave, then goes through.
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    container.remove_within(Duration::from_secs(5)).unwrap();
    for dir in container.dirs() {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
    guard.kill_child();
}
