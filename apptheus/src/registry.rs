//! Containers and their lifecycle.
//!
//! A trusted peer becomes a container: a cgroup in every hierarchy, its whole process tree
//! tracked and moved in. It ends when its last process exits (the connection closing alone does
//! not end it); its final values stay for the retention time, then its series and cgroup go.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use apptheus_common::{Event, EventKind};

use crate::{
    cgroup::{ContainerCgroup, Layout, Placement, Stats},
    gateway::{Peer, Rejection},
    metrics::ContainerSeries,
    state::{SavedContainer, StateDir},
    tracker::{ProcessCounters, Tracker},
};

/// How containers are made and kept.
#[derive(Clone, Debug)]
pub struct Config {
    pub placement: Placement,
    pub parent: String,
    pub retention: Duration,
    pub max_containers: usize,
}

struct Container {
    id: String,
    user: String,
    peer_pid: i32,
    uid: u32,
    exe: String,
    exe_path: String,
    start_time: SystemTime,
    cgroup: Arc<ContainerCgroup>,
    /// Forks after this CLOCK_MONOTONIC time inherit the container's cgroup from their parent;
    /// earlier ones may come from a parent not moved yet, so the child is moved explicitly.
    inherit_after_ns: u64,
    connected: bool,
    ended: Option<Instant>,
    /// Wall-clock time of the end, exported as the end time.
    end_time: Option<SystemTime>,
    /// The last sample was taken after the end: the values are final.
    final_sample: bool,
    /// When all the cgroup's files were last read, and the CPU probe's value then (see
    /// `ContainerCgroup::sample_since`).
    last_full: Option<Instant>,
    probe: Option<u64>,
    stats: Stats,
    procs: ProcessCounters,
}

/// A process to put into a container's cgroup.
pub struct Move {
    key: u64,
    cgroup: Arc<ContainerCgroup>,
    pid: i32,
}

/// What the sampler reads for one container.
pub struct Target {
    pub key: u64,
    pub cgroup: Arc<ContainerCgroup>,
    /// The last full sample, its CPU probe value and process counters, while it may stand in
    /// for an idle container; `None` when every file must be read.
    previous: Option<(Stats, u64, ProcessCounters)>,
}

/// One container's sample.
pub struct Sample {
    key: u64,
    stats: Stats,
    probe: Option<u64>,
    procs: Option<ProcessCounters>,
    /// Every file was read (not only the CPU probe).
    full: bool,
}

/// How long an idle container's values may stand without reading its files: memory can still
/// move without its processes running (reclaim, swap-out), and limits can be changed.
const FULL_SAMPLE_EVERY: Duration = Duration::from_secs(10);

pub struct Registry {
    cfg: Config,
    layout: Layout,
    tracker: Arc<Tracker>,
    state: Mutex<State>,
    /// Where the containers are saved for a restart; none in tests of the registry alone.
    state_dir: Option<StateDir>,
    /// Signalled when a container is admitted (the sampler shows it at once).
    admitted: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    containers: HashMap<u64, Container>,
    next_key: u64,
    /// Admissions under way (they count against the limit).
    admitting: HashSet<u64>,
    /// Cgroups of removed containers whose directories the kernel still reported busy.
    to_remove: Vec<Arc<ContainerCgroup>>,
    /// The set of containers changed since the state file was written.
    dirty: bool,
    /// A container's series changed since `changed_series` last gave them.
    series_changed: bool,
    /// `<parent>` directories the daemon made: removed once empty, whichever of the containers
    /// in them goes last.
    made_parents: HashSet<PathBuf>,
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The user name of `uid`, or the uid itself when it has none.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

impl Registry {
    pub fn new(
        cfg: Config,
        layout: Layout,
        tracker: Arc<Tracker>,
        state_dir: Option<StateDir>,
    ) -> Registry {
        Registry {
            cfg,
            layout,
            tracker,
            state: Mutex::new(State {
                next_key: 1,
                ..Default::default()
            }),
            state_dir,
            admitted: tokio::sync::Notify::new(),
        }
    }

    /// Wait until a container is admitted (one wake-up for any number since the last call).
    pub async fn admitted(&self) {
        self.admitted.notified().await;
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Live containers.
    pub fn live(&self) -> usize {
        self.state()
            .containers
            .values()
            .filter(|c| c.ended.is_none())
            .count()
    }

    /// Make a container of a trusted peer. Blocking (cgroup files, /proc walk). Returns its key
    /// and id.
    pub fn admit(&self, peer: &Peer) -> Result<(u64, String), Rejection> {
        if matches!(self.tracker.key_of(peer.pid), Ok(Some(_))) {
            return Err(Rejection::Nested);
        }
        let exe = exe_basename(&peer.exe_path);
        let id = format!("{exe}_{}", peer.pid);
        let placement = self.cfg.placement;
        let key = {
            let mut st = self.state();
            // Admissions run in parallel: the ones under way count against the limit too (once,
            // whether or not they are in the map yet).
            let admitted = st
                .containers
                .iter()
                .filter(|(k, c)| c.ended.is_none() && !st.admitting.contains(k))
                .count();
            if admitted + st.admitting.len() >= self.cfg.max_containers {
                return Err(Rejection::Limit);
            }
            // An ended container of a recycled pid may still be retained under the same id.
            if st.containers.values().any(|c| c.id == id) {
                st.containers.retain(|_, c| c.id != id || c.ended.is_none());
            }
            st.next_key += 1;
            let key = st.next_key;
            st.admitting.insert(key);
            key
        };
        let res = self.admit_reserved(peer, key, id, exe, placement);
        self.state().admitting.remove(&key);
        res
    }

    /// The rest of `admit`, once a slot is reserved.
    fn admit_reserved(
        &self,
        peer: &Peer,
        key: u64,
        id: String,
        exe: String,
        placement: Placement,
    ) -> Result<(u64, String), Rejection> {
        let cgroup = match self
            .layout
            .create(peer.pid, placement, &self.cfg.parent, &id)
        {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(container = id.as_str(), pid = peer.pid, error = %format!("{e:#}"), "cannot create the container's cgroups");
                return Err(Rejection::Error);
            }
        };
        let user = user_name(peer.uid);
        self.insert(
            key,
            Container {
                id: id.clone(),
                user,
                peer_pid: peer.pid,
                uid: peer.uid,
                exe,
                exe_path: peer.exe_path.to_string_lossy().into_owned(),
                start_time: SystemTime::now(),
                cgroup: cgroup.clone(),
                inherit_after_ns: u64::MAX,
                connected: true,
                ended: None,
                end_time: None,
                final_sample: false,
                last_full: None,
                probe: None,
                stats: Stats::default(),
                procs: ProcessCounters::default(),
            },
        );
        let members = match self.tracker.register(peer.pid, key) {
            Ok(m) => m,
            Err(e) => {
                self.state().containers.remove(&key);
                let _ = cgroup.remove();
                let msg = format!("{e:#}");
                return Err(if msg.contains("exited") {
                    Rejection::Vanished
                } else if msg.contains("already tracked") {
                    Rejection::Nested
                } else {
                    tracing::error!(container = id.as_str(), error = %msg, "cannot track the container's processes");
                    Rejection::Error
                });
            }
        };
        for pid in &members {
            if let Err(e) = cgroup.add_process(*pid) {
                tracing::warn!(container = id.as_str(), pid = *pid, error = %format!("{e:#}"), "cannot move a process into the container's cgroup");
            }
        }
        let now = monotonic_ns();
        let live = self
            .tracker
            .counters(key)
            .ok()
            .flatten()
            .map_or(0, |c| c.live);
        let mut st = self.state();
        if let Some(c) = st.containers.get_mut(&key)
            && c.inherit_after_ns == u64::MAX
        {
            c.inherit_after_ns = now;
        }
        drop(st);
        tracing::info!(
            container = id.as_str(),
            pid = peer.pid,
            uid = peer.uid,
            exe = peer.exe_path.to_string_lossy().as_ref(),
            processes = members.len(),
            cgroup = cgroup.rel_path(),
            "container started"
        );
        if live == 0 {
            self.end(key);
        }
        self.admitted.notify_one();
        Ok((key, id))
    }

    /// Add a container (to be saved with the next state file).
    fn insert(&self, key: u64, c: Container) {
        let mut st = self.state();
        st.dirty = true;
        st.series_changed = true;
        st.made_parents.extend(c.cgroup.made_parents());
        st.containers.insert(key, c);
    }

    /// The launcher closed its connection. The container lives on while it has processes.
    pub fn disconnected(&self, key: u64) {
        let mut st = self.state();
        if let Some(c) = st.containers.get_mut(&key) {
            c.connected = false;
            tracing::debug!(container = c.id.as_str(), "launcher connection closed");
        }
    }

    /// Process a batch of tracker events. Returns the processes that must be moved into their
    /// container's cgroup (children forked before their parent was moved).
    pub fn on_events(&self, events: &[Event]) -> Vec<Move> {
        let mut moves = Vec::new();
        let mut exited = Vec::new();
        {
            let st = self.state();
            for ev in events {
                let Some(c) = st.containers.get(&ev.key) else {
                    continue;
                };
                match ev.kind() {
                    Some(EventKind::Fork) if ev.ts_ns <= c.inherit_after_ns => moves.push(Move {
                        key: ev.key,
                        cgroup: c.cgroup.clone(),
                        pid: ev.pid as i32,
                    }),
                    Some(EventKind::Exit) if c.ended.is_none() => exited.push(ev.key),
                    _ => {}
                }
            }
        }
        exited.dedup();
        for key in exited {
            if matches!(self.tracker.counters(key), Ok(Some(c)) if c.live == 0) {
                self.end(key);
            }
        }
        moves
    }

    /// Carry out moves (blocking), then let later forks of these processes inherit.
    pub fn apply_moves(&self, moves: Vec<Move>) {
        for m in &moves {
            if let Err(e) = m.cgroup.add_process(m.pid) {
                tracing::warn!(pid = m.pid, error = %format!("{e:#}"), "cannot move a forked process into its container's cgroup");
            }
        }
        let now = monotonic_ns();
        let mut st = self.state();
        for m in moves {
            if let Some(c) = st.containers.get_mut(&m.key)
                && c.inherit_after_ns != u64::MAX
            {
                c.inherit_after_ns = c.inherit_after_ns.max(now);
            }
        }
    }

    fn end(&self, key: u64) {
        let mut st = self.state();
        if let Some(c) = st.containers.get_mut(&key)
            && c.ended.is_none()
        {
            c.ended = Some(Instant::now());
            c.end_time = Some(SystemTime::now());
            let secs = c.start_time.elapsed().unwrap_or_default().as_secs_f64();
            tracing::info!(
                container = c.id.as_str(),
                duration_seconds = secs,
                connected = c.connected,
                "container ended"
            );
            st.dirty = true;
            st.series_changed = true;
        }
    }

    /// The containers to sample this pass: live ones, and ended ones not sampled since. With
    /// `only_new`, just those never sampled (to show a new container before the next pass).
    pub fn targets(&self, only_new: bool) -> Vec<Target> {
        self.state()
            .containers
            .iter()
            .filter(|(_, c)| !c.final_sample && (!only_new || c.last_full.is_none()))
            .map(|(&key, c)| {
                let fresh = c.last_full.is_some_and(|t| t.elapsed() < FULL_SAMPLE_EVERY);
                let previous = match c.probe {
                    Some(probe) if fresh && c.ended.is_none() => {
                        Some((c.stats.clone(), probe, c.procs))
                    }
                    _ => None,
                };
                Target {
                    key,
                    cgroup: c.cgroup.clone(),
                    previous,
                }
            })
            .collect()
    }

    /// Sample the targets (blocking): their kernel counters, and their cgroups' files where
    /// something can have changed (a process ran, forked or exited).
    pub fn sample(&self, targets: &[Target]) -> Vec<Sample> {
        targets
            .iter()
            .map(|t| {
                let procs = self.tracker.counters(t.key).ok().flatten();
                let previous = t
                    .previous
                    .as_ref()
                    .filter(|(_, _, then)| procs == Some(*then))
                    .map(|(stats, probe, _)| (stats, *probe));
                let (stats, probe, full) = t.cgroup.sample_since(previous);
                Sample {
                    key: t.key,
                    stats,
                    probe,
                    procs,
                    full,
                }
            })
            .collect()
    }

    /// Store a pass's samples. A container whose counters show no live process has ended even
    /// if its exit event was lost.
    pub fn record(&self, samples: Vec<Sample>) {
        let now = Instant::now();
        let mut ended_now = Vec::new();
        {
            let mut st = self.state();
            for s in samples {
                let Some(c) = st.containers.get_mut(&s.key) else {
                    continue;
                };
                let changed = c.stats != s.stats || s.procs.is_some_and(|p| p != c.procs);
                c.stats = s.stats;
                c.probe = s.probe;
                if s.full {
                    c.last_full = Some(now);
                }
                if let Some(p) = s.procs {
                    c.procs = p;
                }
                if c.ended.is_some() {
                    c.final_sample = true;
                } else if s.procs.is_some_and(|p| p.live == 0) {
                    ended_now.push(s.key);
                }
                st.series_changed |= changed;
            }
        }
        for key in ended_now {
            self.end(key);
        }
    }

    /// Every container's series if any changed since the last call: a pass over idle
    /// containers changes nothing, and the published snapshot (and its rendering) can stay.
    pub fn changed_series(&self) -> Option<Vec<ContainerSeries>> {
        if !std::mem::take(&mut self.state().series_changed) {
            return None;
        }
        Some(self.series())
    }

    /// Every container's series, live and retained.
    pub fn series(&self) -> Vec<ContainerSeries> {
        let st = self.state();
        let mut out: Vec<ContainerSeries> = st
            .containers
            .values()
            .map(|c| ContainerSeries {
                id: c.id.clone(),
                user: c.user.clone(),
                exe: c.exe.clone(),
                exe_path: c.exe_path.clone(),
                pid: c.peer_pid,
                uid: c.uid,
                cgroup: c.cgroup.rel_path().to_string(),
                memory_source: c.cgroup.memory_source().as_str(),
                start_time: unix_seconds(c.start_time),
                end_time: c.end_time.map(unix_seconds),
                stats: c.stats.clone(),
                procs: c.procs,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Drop containers whose retention has passed: forget them in the tracker and remove their
    /// cgroups (blocking; a cgroup the kernel still reports busy is retried on the next call).
    pub fn reap(&self) {
        let mut done = Vec::new();
        let mut to_remove = {
            let mut st = self.state();
            let retention = self.cfg.retention;
            let expired: Vec<u64> = st
                .containers
                .iter()
                .filter(|(_, c)| {
                    c.final_sample && c.ended.is_some_and(|t| t.elapsed() >= retention)
                })
                .map(|(&k, _)| k)
                .collect();
            for key in expired {
                if let Some(c) = st.containers.remove(&key) {
                    st.dirty = true;
                    st.series_changed = true;
                    tracing::debug!(
                        container = c.id.as_str(),
                        "retention over: removing the container's series and cgroups"
                    );
                    done.push(key);
                    st.to_remove.push(c.cgroup);
                }
            }
            std::mem::take(&mut st.to_remove)
        };
        for key in done {
            if let Err(e) = self.tracker.unregister(key) {
                tracing::warn!(error = %format!("{e:#}"), "forgetting a container in the tracker");
            }
        }
        let before = to_remove.len();
        to_remove.retain(|cg| match cg.remove() {
            Ok(()) => false,
            Err(e) => {
                tracing::debug!(cgroup = cg.rel_path(), error = %format!("{e:#}"), "cgroup still busy; will retry");
                true
            }
        });
        let removed_any = to_remove.len() < before;
        let mut st = self.state();
        st.to_remove.extend(to_remove);
        if removed_any {
            remove_empty_parents(&mut st.made_parents);
        }
    }

    /// At shutdown: remove the cgroups of ended containers (empty ones only: the kernel refuses
    /// the others) and save the live ones for the next start. Live containers' processes are
    /// left where they are.
    pub fn shutdown(&self) {
        let mut st = self.state();
        let mut removed = Vec::new();
        for (key, c) in &st.containers {
            if c.ended.is_some() && c.cgroup.remove().is_ok() {
                tracing::debug!(container = c.id.as_str(), "removed cgroup at shutdown");
                removed.push(*key);
            }
        }
        for key in removed {
            st.containers.remove(&key);
            st.dirty = true;
        }
        for cg in &st.to_remove {
            let _ = cg.remove();
        }
        remove_empty_parents(&mut st.made_parents);
        drop(st);
        self.persist();
    }

    /// Write the state file if the set of containers changed since it was last written
    /// (blocking). A failure is logged and retried on the next call.
    pub fn persist(&self) {
        let Some(dir) = &self.state_dir else { return };
        let saved = {
            let mut st = self.state();
            if !st.dirty {
                return;
            }
            st.dirty = false;
            st.containers
                .values()
                .map(|c| saved_of(c, &st.made_parents))
                .collect::<Vec<_>>()
        };
        if let Err(e) = dir.save(&saved) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the containers for a restart; will retry");
            self.state().dirty = true;
        }
    }

    /// At start, before any launcher is admitted: take back the containers a previous run left
    /// under `--cgroup.parent` (blocking). A container whose cgroup still holds processes is
    /// tracked again, its processes and their descendants under a new key; one whose cgroup is
    /// empty ended while the daemon was down: it is exported as ended for the retention time,
    /// then removed. Labels and start time come from the state file, or, for a container it
    /// missed (admitted just before a crash), from its id and its processes.
    pub fn recover(&self, saved: Vec<SavedContainer>) -> Recovery {
        let mut recovery = Recovery::default();
        let ours = |rel: &str| {
            let mut parts = rel.rsplit('/');
            let id = parts.next().unwrap_or("");
            parts.next() == Some(self.cfg.parent.as_str()) && pid_of_id(id).is_some()
        };
        // By cgroup path: the state file's entries, then what the tree shows that it missed.
        let mut candidates: BTreeMap<String, Option<SavedContainer>> = saved
            .into_iter()
            .filter(|c| ours(&c.cgroup))
            .map(|c| (c.cgroup.clone(), Some(c)))
            .collect();
        for rel in self.layout.list(&self.cfg.parent) {
            if ours(&rel) {
                candidates.entry(rel).or_insert(None);
            }
        }
        for (rel, saved) in candidates {
            let made = saved.as_ref().map_or(&[][..], |s| &s.made_parents[..]);
            let Some(cgroup) = self.layout.open(&rel, made) else {
                // Removed after the state file was written.
                continue;
            };
            let cgroup = Arc::new(cgroup);
            let procs = cgroup.procs();
            let saved = saved.unwrap_or_else(|| guess_saved(&rel, &cgroup, &procs));
            let key = {
                let mut st = self.state();
                st.next_key += 1;
                st.next_key
            };
            let members = if procs.is_empty() {
                Vec::new()
            } else {
                match self.tracker.readopt(&procs, key) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(container = saved.id.as_str(), error = %format!("{e:#}"), "cannot track a re-adopted container's processes");
                        let _ = self.tracker.unregister(key);
                        Vec::new()
                    }
                }
            };
            // Descendants that left the cgroup while the daemon was down come back in.
            for pid in members.iter().filter(|p| !procs.contains(p)) {
                if let Err(e) = cgroup.add_process(*pid) {
                    tracing::warn!(container = saved.id.as_str(), pid = *pid, error = %format!("{e:#}"), "cannot move a process into the container's cgroup");
                }
            }
            let live = !members.is_empty();
            let end_time = (!live).then(|| {
                saved
                    .end_time
                    .map_or_else(SystemTime::now, from_unix_seconds)
            });
            if live {
                recovery.readopted += 1;
                recovery.processes += members.len();
                tracing::info!(
                    container = saved.id.as_str(),
                    processes = members.len(),
                    cgroup = rel.as_str(),
                    "container re-adopted"
                );
            } else {
                recovery.ended += 1;
                tracing::info!(
                    container = saved.id.as_str(),
                    cgroup = rel.as_str(),
                    "container ended while the daemon was down"
                );
            }
            self.insert(
                key,
                Container {
                    id: saved.id,
                    user: saved.user,
                    peer_pid: saved.pid,
                    uid: saved.uid,
                    exe: saved.exe,
                    exe_path: saved.exe_path,
                    start_time: from_unix_seconds(saved.start_time),
                    cgroup,
                    inherit_after_ns: monotonic_ns(),
                    connected: false,
                    ended: end_time.map(|_| Instant::now()),
                    end_time,
                    final_sample: false,
                    last_full: None,
                    probe: None,
                    stats: Stats::default(),
                    procs: ProcessCounters::default(),
                },
            );
        }
        recovery
    }
}

/// What `recover` found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub readopted: usize,
    pub processes: usize,
    pub ended: usize,
}

/// Remove the made `<parent>` directories that are empty now; keep the others for later.
fn remove_empty_parents(made: &mut HashSet<PathBuf>) {
    made.retain(|dir| match std::fs::remove_dir(dir) {
        Ok(()) => false,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    });
}

/// A container as the state file keeps it. Its made parents are those of its own directories
/// that the daemon made, whichever container made them, so that they outlive their maker.
fn saved_of(c: &Container, made_parents: &HashSet<PathBuf>) -> SavedContainer {
    SavedContainer {
        id: c.id.clone(),
        cgroup: c.cgroup.rel_path().to_string(),
        user: c.user.clone(),
        uid: c.uid,
        pid: c.peer_pid,
        exe: c.exe.clone(),
        exe_path: c.exe_path.clone(),
        start_time: unix_seconds(c.start_time),
        end_time: c.end_time.map(unix_seconds),
        made_parents: c
            .cgroup
            .dirs()
            .iter()
            .filter_map(|d| d.parent())
            .filter(|p| made_parents.contains(*p))
            .map(Path::to_path_buf)
            .collect(),
    }
}

/// The launcher pid at the end of a container id (`<exe>_<pid>`).
fn pid_of_id(id: &str) -> Option<i32> {
    let (exe, digits) = id.rsplit_once('_')?;
    let pid: i32 = digits.parse().ok()?;
    // Only the daemon's own spelling: no sign, no leading zeros.
    (!exe.is_empty() && pid > 0 && pid.to_string() == digits).then_some(pid)
}

/// Labels for a container found in the cgroup tree but not in the state file: the exe and pid
/// from its id, the user and exe path from the launcher if it still runs in the container (else
/// the user of any of its processes), the start time from its directory.
fn guess_saved(rel: &str, cgroup: &ContainerCgroup, procs: &[i32]) -> SavedContainer {
    let id = rel.rsplit('/').next().unwrap_or_default().to_string();
    let pid = pid_of_id(&id).unwrap_or(0);
    let (exe, _) = id.rsplit_once('_').unwrap_or((id.as_str(), ""));
    let exe = exe.to_string();
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
    let start_time = cgroup
        .dirs()
        .first()
        .and_then(|d| std::fs::metadata(d).ok())
        .and_then(|m| m.created().or_else(|_| m.modified()).ok())
        .map_or_else(|| unix_seconds(SystemTime::now()), unix_seconds);
    SavedContainer {
        id,
        cgroup: rel.to_string(),
        user: if uid == u32::MAX {
            "unknown".into()
        } else {
            user_name(uid)
        },
        uid,
        pid,
        exe,
        exe_path,
        start_time,
        end_time: None,
        made_parents: Vec::new(),
    }
}

/// The inverse of `unix_seconds` (a state file's time; bad values are refused when it is read).
fn from_unix_seconds(secs: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::try_from_secs_f64(secs).unwrap_or_default()
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn exe_basename(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into());
    name.strip_suffix(" (deleted)")
        .map(str::to_owned)
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basenames() {
        assert_eq!(
            exe_basename(Path::new("/usr/libexec/apptainer/bin/starter-suid")),
            "starter-suid"
        );
        assert_eq!(
            exe_basename(Path::new("/opt/x/apptheus-exec (deleted)")),
            "apptheus-exec"
        );
        assert_eq!(exe_basename(Path::new("/")), "unknown");
    }

    #[test]
    fn ids() {
        assert_eq!(pid_of_id("starter-suid_4242"), Some(4242));
        assert_eq!(pid_of_id("a_b_7"), Some(7));
        for bad in [
            "4242",
            "_4242",
            "x_",
            "x_+1",
            "x_012",
            "x_-1",
            "x_0",
            "x_99999999999",
        ] {
            assert_eq!(pid_of_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn user_names() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "4000000000");
    }
}
