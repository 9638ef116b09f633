//! Containers and their lifecycle: admit, end, retain, forget.
//!
//! A trusted peer becomes a container: a cgroup in every hierarchy, its whole process tree
//! tracked and moved in. It ends when its last process exits (the connection closing alone does
//! not end it); its final values stay for the retention time, then it is forgotten and its
//! cgroup removed. The sampler reads the containers through `entries`; recovery after a restart
//! puts them back through `restore`.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use foldhash::{HashMap, HashSet};
use parking_lot::{Mutex, MutexGuard};

mod admit;
mod events;
mod restart;

pub use self::admit::Admitted;
use tokio_util::sync::CancellationToken;

use crate::{
    cgroup::{self, ContainerCgroup, Layout, Placement},
    container::{Identity, unix_seconds},
    privacy::Privacy,
    ratelimit::TokenBucket,
    state::SavedContainer,
    tracker::{self, Tracker},
};

/// How long an ended container's directories may stay busy (its last process on its way out
/// of the cgroup) before their removal is left to `reap`: see `ContainerCgroup::remove_within`.
const RELEASE_WITHIN: Duration = Duration::from_millis(100);

/// Busy cgroups kept for removal at most: a process that outlives its container (or a user who
/// keeps a cgroup busy) must not grow the list, and every pass's retries, without bound. Beyond
/// it the one queued longest ago is left behind on disk, counted and logged.
const MAX_TO_REMOVE: usize = 1024;
/// The first wait before a busy cgroup is tried again, doubled after each failure up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(600);
/// At most one log line per this long about cgroups left behind.
const LEFT_BEHIND_LOG_EVERY: Duration = Duration::from_secs(60);

/// A cgroup to remove once the kernel no longer reports it busy.
struct Busy {
    cgroup: Arc<ContainerCgroup>,
    /// Not tried again before this.
    retry_at: Instant,
    /// How long it waits after its next failure.
    wait: Duration,
}

/// How containers are made and kept.
#[derive(Clone, Debug)]
pub struct Config {
    pub placement: Placement,
    pub parent: String,
    pub retention: Duration,
    pub max_containers: usize,
    /// How the values naming a person are published (`--privacy.hash-salt-file`).
    pub privacy: Arc<Privacy>,
    pub limits: Limits,
    /// Whether each container's traffic is counted (`--collector.disable=network` turns it
    /// off: the network programs, attached at the unified tree's root, then run for no packet).
    pub network: bool,
}

/// What one user may hold, so that one user's churn cannot starve the others.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Live containers per uid.
    pub containers_per_user: usize,
    /// Ended containers kept for the retention, in all and per uid: beyond them a user's
    /// oldest ended container is forgotten early.
    pub retained: usize,
    pub retained_per_user: usize,
    /// Admissions per second per uid, with bursts of `admission_burst`; a launcher beyond them
    /// waits its turn, up to `admission_max_wait`.
    pub admissions_per_second: f64,
    pub admission_burst: u32,
    pub admission_max_wait: Duration,
}

/// Why a peer could not be made a container.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// A limit is reached (named by its flag).
    #[error("{0} reached")]
    Limit(&'static str),
    /// No descriptor left for one more connection (`descriptors`).
    #[error(
        "no descriptor left for its connection: containers hold {held} of the {shared} the budget gives them under the limit of {limit} (raise LimitNOFILE)"
    )]
    Descriptors {
        held: usize,
        shared: usize,
        limit: usize,
    },
    #[error(transparent)]
    Tracker(#[from] tracker::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
}

/// A container the registry keeps.
struct Container {
    identity: Arc<Identity>,
    /// None while it is being admitted: its cgroup is decided once its processes are known.
    cgroup: Option<Arc<ContainerCgroup>>,
    /// Children forked while `cgroup` was None, to move once it is known.
    early_forks: Vec<i32>,
    /// Forks after this CLOCK_MONOTONIC time inherit the container's cgroup from their parent;
    /// earlier ones may come from a parent not moved yet, so the child is moved explicitly.
    inherit_after_ns: u64,
    connected: bool,
    /// When the last process exited: for the retention, and as the end time.
    ended: Option<(Instant, SystemTime)>,
    /// Its tree's walk was cut short at its bound: go on with it (see `finish_walks`).
    walking: bool,
    /// Cancelled when it ends: its launcher's connection closes then.
    gone: CancellationToken,
    /// Cancelled once the daemon has let go of its cgroup (see `release`), or when it is
    /// forgotten: its launcher's connection is told `end` then.
    released: Released,
}

/// A container's "let go" signal, also given when the container is dropped from the registry
/// by any path (forgotten, recycled, a failed admission), so that no launcher waits for it.
struct Released(CancellationToken);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Container {
    fn pending(identity: Identity) -> Container {
        Container {
            identity: Arc::new(identity),
            cgroup: None,
            early_forks: Vec::new(),
            inherit_after_ns: u64::MAX,
            connected: true,
            ended: None,
            walking: false,
            gone: CancellationToken::new(),
            released: Released(CancellationToken::new()),
        }
    }
}

/// A container as the sampler sees it.
#[derive(Clone)]
pub struct Entry {
    pub key: u64,
    pub identity: Arc<Identity>,
    pub cgroup: Arc<ContainerCgroup>,
    /// When its last process exited; `None` while it lives.
    pub end_time: Option<SystemTime>,
}

pub struct Registry {
    cfg: Config,
    layout: Layout,
    tracker: Arc<Tracker>,
    state: Mutex<State>,
    /// Signalled when a container is admitted (the sampler shows it at once).
    admitted: tokio::sync::Notify,
    /// Signalled when a container ends (the sampler takes its final values at once, then its
    /// directories go, before a batch system tries to remove the job's cgroup).
    ended: tokio::sync::Notify,
}

/// Time one sampling pass gives the walks that were cut short, at most. After a burst of
/// thousands of admissions most walks may have been cut short (seen at 10,000 containers:
/// 9,197), each to be walked again over the host's processes; doing them all in one pass held
/// the sampling, and every new container's first sample, for minutes.
const FINISH_WALKS_BUDGET: Duration = Duration::from_millis(50);

/// A container whose walk goes on: its key, identity and cgroup.
type Walking = (u64, Arc<Identity>, Arc<ContainerCgroup>);

#[derive(Default)]
struct State {
    containers: HashMap<u64, Container>,
    next_key: u64,
    /// Admissions under way, and their uid (they count against the limits).
    admitting: HashMap<u64, String>,
    /// Cgroups of ended or forgotten containers whose directories the kernel still reported
    /// busy, in the order they were (re)queued, at most `MAX_TO_REMOVE`.
    to_remove: std::collections::VecDeque<Busy>,
    /// Busy cgroups given up on because `to_remove` was full, since the start; and when that
    /// was last logged.
    left_behind: u64,
    left_behind_logged: Option<Instant>,
    /// The set of containers changed since `unsaved` last gave it.
    dirty: bool,
    /// Bumped whenever a container is added, ends or is forgotten.
    generation: u64,
    /// `<parent>` directories the daemon made: removed once empty, whichever of the containers
    /// in them goes last.
    made_parents: HashSet<PathBuf>,
    /// Per uid, the admission token bucket.
    admissions: HashMap<String, TokenBucket>,
    /// Walks of a tree cut short at their bound, since the start.
    walks_cut_short: u64,
    /// The key of the last container whose walk `finish_walks` went on with: the next pass
    /// starts after it, so that every cut-short walk gets its turn.
    walk_cursor: u64,
}

impl State {
    /// Keep `cgroup` to remove when it is no longer busy, first tried at `at`; beyond the
    /// bound the oldest kept is left behind.
    fn remove_later(&mut self, cgroup: Arc<ContainerCgroup>, at: Instant) {
        self.retry(Busy {
            cgroup,
            retry_at: at,
            wait: RETRY_FIRST,
        });
    }

    fn retry(&mut self, busy: Busy) {
        self.to_remove.push_back(busy);
        while self.to_remove.len() > MAX_TO_REMOVE {
            let Some(old) = self.to_remove.pop_front() else {
                break;
            };
            self.left_behind += 1;
            if self
                .left_behind_logged
                .is_none_or(|t| t.elapsed() >= LEFT_BEHIND_LOG_EVERY)
            {
                self.left_behind_logged = Some(Instant::now());
                tracing::warn!(
                    cgroup = old.cgroup.rel_path(),
                    left_behind_total = self.left_behind,
                    "too many busy cgroups to retry: the oldest is left behind, not removed"
                );
            }
        }
    }

    fn changed(&mut self) {
        self.dirty = true;
        self.generation += 1;
    }

    /// Take one admission of `uid`'s bucket: how long the launcher must wait for it (zero
    /// while the burst lasts; past it, one `1/per_second` after the one before, in order of
    /// arrival), or None if that is longer than `max_wait` (nothing is taken then).
    fn admission_turn(&mut self, uid: &str, limits: &Limits) -> Option<Duration> {
        let now = Instant::now();
        // Full buckets carry no information: drop them so the table stays small.
        if self.admissions.len() > 4096 {
            self.admissions.retain(|_, bucket| !bucket.is_full(now));
        }
        self.admissions
            .entry(uid.to_string())
            .or_insert_with(|| {
                TokenBucket::per_second(
                    limits.admissions_per_second,
                    limits.admission_burst.max(1),
                    now,
                )
            })
            .reserve(now, limits.admission_max_wait)
    }

    /// A turn `admission_turn` gave that was not used for an admission.
    fn give_back_turn(&mut self, uid: &str) {
        if let Some(bucket) = self.admissions.get_mut(uid) {
            bucket.give_back();
        }
    }
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

impl Registry {
    pub fn new(mut cfg: Config, layout: Layout, tracker: Arc<Tracker>) -> Registry {
        if cfg.network {
            cfg.network = match layout.unified_mount() {
                Some(root) => match tracker.count_network_below(root) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot count containers' network traffic");
                        false
                    }
                },
                None => false,
            };
        }
        Registry {
            cfg,
            layout,
            tracker,
            state: Mutex::new(State::default()),
            admitted: tokio::sync::Notify::new(),
            ended: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// How the values naming a person are published (the gateway's refusals and a restart's
    /// recovery publish with it too).
    pub fn privacy(&self) -> &Arc<Privacy> {
        &self.cfg.privacy
    }

    /// The tracker, whose counters the sampler reads each pass (the one reach into the
    /// registry's parts left; recovery asks through `restart`'s methods).
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The turn of a launcher of `uid` under its user's admission rate: how
    /// long it waits before `admit`. Launchers of one user take their turns in order; those of
    /// other users are not held up by them.
    pub fn admission_turn(&self, uid: u32) -> Result<Duration, AdmitError> {
        // Users are told apart by their uid as published (see `admit`).
        let uid = self.cfg.privacy.uid(uid);
        let limits = self.cfg.limits.clone();
        self.state()
            .admission_turn(&uid, &limits)
            .ok_or(AdmitError::Limit("--gateway.admission-rate-per-user"))
    }

    /// Wait until a container is admitted (one wake-up for any number since the last call).
    pub async fn admitted(&self) {
        self.admitted.notified().await;
    }

    /// Wait until a container ends (one wake-up for any number since the last call).
    pub async fn ended(&self) {
        self.ended.notified().await;
    }

    /// A fresh key (for recovery, which admits no peer).
    pub fn next_key(&self) -> u64 {
        let mut st = self.state();
        st.next_key += 1;
        st.next_key
    }

    /// Put back a container a previous run left (recovery); `end_time` for one that ended
    /// while the daemon was down.
    pub fn restore(
        &self,
        key: u64,
        identity: Identity,
        cgroup: Arc<ContainerCgroup>,
        end_time: Option<SystemTime>,
    ) {
        if end_time.is_none() {
            self.count_network(key, &identity.id, &cgroup);
        }
        let mut st = self.state();
        st.made_parents.extend(cgroup.made_parents());
        st.containers.insert(
            key,
            Container {
                cgroup: Some(cgroup),
                inherit_after_ns: monotonic_ns(),
                connected: false,
                ended: end_time.map(|t| (Instant::now(), t)),
                ..Container::pending(identity)
            },
        );
        st.changed();
    }

    /// Count the container's network traffic in the kernel (from its cgroup v2 directory); a
    /// failure costs only those metrics.
    fn count_network(&self, key: u64, id: &str, cgroup: &ContainerCgroup) {
        if !self.cfg.network {
            return;
        }
        if let Err(e) = self.tracker.attach_network(key, cgroup) {
            tracing::warn!(container = id, error = %e, "cannot count the container's network traffic");
        }
    }

    /// The launcher closed its connection. The container lives on while it has processes.
    pub fn disconnected(&self, key: u64) {
        let mut st = self.state();
        if let Some(c) = st.containers.get_mut(&key) {
            c.connected = false;
            tracing::debug!(
                container = c.identity.id.as_str(),
                "launcher connection closed"
            );
        }
    }

    /// The container's last process exited.
    pub fn end(&self, key: u64) {
        let mut st = self.state();
        let Some(c) = st.containers.get_mut(&key) else {
            return;
        };
        if c.ended.is_some() {
            return;
        }
        c.ended = Some((Instant::now(), SystemTime::now()));
        self.tracker.container_ended(key);
        let secs = (SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
            - c.identity.start_time)
            .max(0.0);
        tracing::info!(
            container = c.identity.id.as_str(),
            duration_seconds = secs,
            connected = c.connected,
            "container ended"
        );
        c.gone.cancel();
        st.changed();
        drop(st);
        self.ended.notify_one();
    }

    /// Cancelled when container `key` ends (already, if it has ended or is forgotten): its
    /// launcher's connection, and any copy of it, is closed then.
    pub fn gone(&self, key: u64) -> CancellationToken {
        match self.state().containers.get(&key) {
            Some(c) => c.gone.clone(),
            None => {
                let token = CancellationToken::new();
                token.cancel();
                token
            }
        }
    }

    /// Cancelled once the daemon has let go of ended container `key`'s cgroup (its final values
    /// taken, its own directories removed or left to `reap` when busy, its network programs
    /// detached), or when it is forgotten (already, if it is unknown).
    pub fn released(&self, key: u64) -> CancellationToken {
        match self.state().containers.get(&key) {
            Some(c) => c.released.0.clone(),
            None => {
                let token = CancellationToken::new();
                token.cancel();
                token
            }
        }
    }

    /// The walk of `key`'s tree stopped at its bound: `finish_walks` goes on with it.
    fn walk_cut_short(&self, key: u64, id: &str) {
        let mut st = self.state();
        st.walks_cut_short += 1;
        if let Some(c) = st.containers.get_mut(&key) {
            c.walking = true;
        }
        tracing::warn!(
            container = id,
            "the walk of the container's process tree was cut short at its bound; it goes on at the next passes (forks of its tracked processes are followed meanwhile)"
        );
    }

    /// Walks of a tree cut short at their bound, since the start.
    pub fn walks_cut_short(&self) -> u64 {
        self.state().walks_cut_short
    }

    /// Go on with the walks that were cut short (blocking; each bounded again), moving what
    /// they adopt into the container; for `FINISH_WALKS_BUDGET` per pass at most, starting
    /// after the container the last pass stopped at.
    pub fn finish_walks(&self) {
        let start = Instant::now();
        let (mut walking, cursor): (Vec<Walking>, u64) = {
            let st = self.state();
            let walking = st
                .containers
                .iter()
                .filter(|(_, c)| c.walking && c.ended.is_none())
                .filter_map(|(k, c)| Some((*k, c.identity.clone(), c.cgroup.clone()?)))
                .collect();
            (walking, st.walk_cursor)
        };
        // In key order from just after the cursor, then around.
        walking.sort_by_key(|(k, _, _)| (*k <= cursor, *k));
        for (key, identity, cgroup) in walking {
            if start.elapsed() > FINISH_WALKS_BUDGET {
                break;
            }
            self.state().walk_cursor = key;
            // Until the processes this walk adopts are moved, their children's fork events are
            // moves too (as at admission): a child forked before its parent's move does not
            // inherit the container's cgroup.
            if let Some(c) = self.state().containers.get_mut(&key) {
                c.inherit_after_ns = u64::MAX;
            }
            let tracked = match self.tracker.walk_again(key, start) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(container = identity.id.as_str(), error = %e, "cannot go on with the walk of the container's tree");
                    if let Some(c) = self.state().containers.get_mut(&key) {
                        c.inherit_after_ns = monotonic_ns();
                    }
                    continue;
                }
            };
            for process in &tracked.members {
                self.move_into(&cgroup, process, key, &identity.id);
            }
            let now = monotonic_ns();
            if let Some(c) = self.state().containers.get_mut(&key) {
                c.inherit_after_ns = now;
                c.walking &= !tracked.complete;
            }
        }
    }

    /// Remove the directories an ended container had of its own, now that its final values
    /// are taken (blocking; a directory the kernel still reports busy is retried by `reap`).
    /// The container itself stays, with those values, for the retention.
    pub fn release(&self, key: u64) {
        if self
            .state()
            .containers
            .get(&key)
            .is_some_and(|c| c.ended.is_some())
        {
            self.tracker.container_released(key);
        }
        let Some(cgroup) = self
            .state()
            .containers
            .get(&key)
            .filter(|c| c.ended.is_some())
            .and_then(|c| c.cgroup.clone())
        else {
            return;
        };
        let removed = cgroup.remove_within(RELEASE_WITHIN);
        let mut st = self.state();
        match removed {
            Ok(()) => remove_empty_parents(&mut st.made_parents),
            Err(e) => {
                tracing::debug!(cgroup = cgroup.rel_path(), error = %e, "cgroup still busy; will retry");
                st.remove_later(cgroup, Instant::now());
            }
        }
        // Let go of, as far as it can be now: a busy directory is `reap`'s, and a launcher
        // that waits for it would wait for a process that outlived its container.
        if let Some(c) = st.containers.get(&key) {
            c.released.0.cancel();
        }
    }

    /// Bumped whenever a container is added, ends or is forgotten: `entries` is the same while
    /// it is.
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Every container, live and retained; not those still being admitted (shown once their
    /// processes are in their cgroup, so that nothing a user starts on seeing it runs outside).
    pub fn entries(&self) -> Vec<Entry> {
        let st = self.state();
        st.containers
            .iter()
            .filter(|(key, _)| !st.admitting.contains_key(key))
            .filter_map(|(&key, c)| {
                Some(Entry {
                    key,
                    identity: c.identity.clone(),
                    cgroup: c.cgroup.clone()?,
                    end_time: c.ended.map(|(_, t)| t),
                })
            })
            .collect()
    }

    /// Forget the containers whose retention has passed, among those whose final values
    /// `is_final` says were taken: in the tracker too, and remove their cgroups (blocking; a
    /// cgroup the kernel still reports busy is retried on the next call).
    pub fn reap(&self, is_final: impl Fn(u64) -> bool) {
        let retention = self.cfg.retention;
        let now = Instant::now();
        let (done, due) = {
            let mut st = self.state();
            let mut expired: Vec<u64> = st
                .containers
                .iter()
                .filter(|(k, c)| {
                    c.ended.is_some_and(|(t, _)| t.elapsed() >= retention) && is_final(**k)
                })
                .map(|(&k, _)| k)
                .collect();
            expired.extend(self.over_retained(&st, &expired, &is_final));
            for key in &expired {
                if let Some(c) = st.containers.remove(key) {
                    tracing::debug!(
                        container = c.identity.id.as_str(),
                        "retention over: removing the container's series and cgroups"
                    );
                    if let Some(cg) = c.cgroup {
                        st.remove_later(cg, now);
                    }
                }
            }
            if !expired.is_empty() {
                st.changed();
            }
            // Only those whose wait is over: a cgroup that stays busy (a process that outlived
            // its container) is tried ever more rarely, not on every pass.
            let (due, later) = std::mem::take(&mut st.to_remove)
                .into_iter()
                .partition::<Vec<_>, _>(|b| b.retry_at <= now);
            st.to_remove = later.into();
            (expired, due)
        };
        for key in done {
            self.forget_in_tracker(key);
        }
        let before = due.len();
        let busy: Vec<Busy> = due
            .into_iter()
            .filter(|b| match b.cgroup.remove() {
                Ok(()) => false,
                Err(e) => {
                    tracing::debug!(cgroup = b.cgroup.rel_path(), error = %e, "cgroup still busy; will retry");
                    true
                }
            })
            .collect();
        let removed_any = busy.len() < before;
        let mut st = self.state();
        for b in busy {
            st.retry(Busy {
                retry_at: now + b.wait,
                wait: (b.wait * 2).min(RETRY_LAST),
                cgroup: b.cgroup,
            });
        }
        if removed_any {
            remove_empty_parents(&mut st.made_parents);
        }
    }

    /// Forget a container that the registry has forgotten in the tracker too (its entries in
    /// the kernel's maps): every path that drops a container comes here, or the maps, sized
    /// for the limits, fill with entries nobody holds.
    fn forget_in_tracker(&self, key: u64) {
        if let Err(e) = self.tracker.unregister(key) {
            tracing::warn!(error = %e, "forgetting a container in the tracker");
        }
    }

    /// The ended containers, beyond those `expired`, to forget before their retention is over
    /// because their user (or all users) retain more than the limits allow: the oldest ended
    /// first.
    fn over_retained(
        &self,
        st: &State,
        expired: &[u64],
        is_final: impl Fn(u64) -> bool,
    ) -> Vec<u64> {
        let limits = &self.cfg.limits;
        let mut retained: Vec<(Instant, u64, &str)> = st
            .containers
            .iter()
            .filter(|(k, _)| !expired.contains(k) && is_final(**k))
            .filter_map(|(k, c)| Some((c.ended?.0, *k, c.identity.uid.as_str())))
            .collect();
        // Newest first: what is kept is the newest.
        retained.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut per_user: HashMap<&str, usize> = HashMap::default();
        let mut kept = 0;
        let mut out = Vec::new();
        for (_, key, uid) in retained {
            let users = per_user.entry(uid).or_default();
            if kept >= limits.retained || *users >= limits.retained_per_user {
                out.push(key);
            } else {
                kept += 1;
                *users += 1;
            }
        }
        out
    }

    /// The containers to save for a restart, if they changed since the last call. After a
    /// failed save, `unsaved_again` asks for them at the next call.
    pub fn unsaved(&self) -> Option<Vec<SavedContainer>> {
        let mut st = self.state();
        if !std::mem::take(&mut st.dirty) {
            return None;
        }
        Some(
            st.containers
                .values()
                .filter_map(|c| saved_of(c, &st.made_parents))
                .collect(),
        )
    }

    pub fn unsaved_again(&self) {
        self.state().dirty = true;
    }

    /// At shutdown: remove the cgroups of ended containers (empty ones only: the kernel refuses
    /// the others). Live containers' processes are left where they are.
    pub fn shutdown(&self) {
        let mut st = self.state();
        let removed: Vec<u64> = st
            .containers
            .iter()
            .filter(|(_, c)| {
                c.ended.is_some() && c.cgroup.as_ref().is_none_or(|cg| cg.remove().is_ok())
            })
            .map(|(key, c)| {
                tracing::debug!(
                    container = c.identity.id.as_str(),
                    "removed cgroup at shutdown"
                );
                *key
            })
            .collect();
        for key in removed {
            st.containers.remove(&key);
            st.changed();
        }
        for b in &st.to_remove {
            let _ = b.cgroup.remove();
        }
        remove_empty_parents(&mut st.made_parents);
    }
}

/// Remove the made `<parent>` directories that are empty now; keep the others for later.
fn remove_empty_parents(made: &mut HashSet<PathBuf>) {
    made.retain(|dir| match std::fs::remove_dir(dir) {
        Ok(()) => false,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    });
}

/// A container as the state file keeps it (none while it is being admitted). Its made parents
/// are those of its own directories that the daemon made, whichever container made them, so
/// that they outlive their maker.
fn saved_of(c: &Container, made_parents: &HashSet<PathBuf>) -> Option<SavedContainer> {
    let cgroup = c.cgroup.as_ref()?;
    Some(SavedContainer {
        identity: Identity::clone(&c.identity),
        end_time: c.ended.map(|(_, t)| unix_seconds(t)),
        made_parents: cgroup
            .dirs()
            .iter()
            .filter_map(|d| d.parent())
            .filter(|p| made_parents.contains(*p))
            .map(Path::to_path_buf)
            .collect(),
        adopted: cgroup.adopted(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup that stays busy cannot grow the list of those to remove: beyond the bound the
    /// one queued longest ago is left behind, and counted.
    #[test]
    fn busy_cgroups_to_remove_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("unified");
        std::fs::create_dir_all(root.join("c")).unwrap();
        let mountinfo = format!(
            "90 1 0:90 / {} rw,relatime - cgroup2 cgroup2 rw\n",
            root.display()
        );
        let layout = Layout::from_mountinfo(&mountinfo).unwrap();
        let cgroup = Arc::new(layout.open("/c", &[], &[]).unwrap());
        let mut st = State::default();
        let now = Instant::now();
        for _ in 0..MAX_TO_REMOVE + 10 {
            st.remove_later(cgroup.clone(), now);
        }
        assert_eq!(st.to_remove.len(), MAX_TO_REMOVE);
        assert_eq!(st.left_behind, 10);
        assert!(st.left_behind_logged.is_some());
    }
}
