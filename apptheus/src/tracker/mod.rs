//! The eBPF process-tree tracker: loads the embedded programs, keeps the map of tracked processes,
//! and streams their fork/exec/exit events.
//!
//! Membership is decided in the kernel for every process forked after its parent is tracked;
//! `register` adds the root and walks /proc for the descendants that existed before, without
//! racing the fork hook: both sides insert with `BPF_NOEXIST`, and whoever inserts counts the
//! process live, so each process is counted once.
pub mod format;
pub mod proctable;
mod tracefs;

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Mutex,
};

use anyhow::{Context as _, Result, anyhow, bail};
use apptheus_common::{Counters, Event};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tokio::io::unix::AsyncFd;

use self::proctable::ProcTable;

pub use tracefs::{TRACEFS, ensure_tracefs};

/// `BPF_NOEXIST` from `<linux/bpf.h>`.
const BPF_NOEXIST: u64 = 1;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apptheus"));

/// The programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str, &str); 4] = [
    ("task_newtask", "task", "task_newtask"),
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

/// A container's process counters, as the kernel counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    pub forks: u64,
    pub execs: u64,
    pub exits: u64,
    /// Live processes: adopted at registration plus forked, minus exited.
    pub live: u64,
}

struct Maps {
    tracked: BpfHashMap<MapData, u32, u64>,
    counters: BpfHashMap<MapData, u64, Counters>,
    lost: PerCpuArray<MapData, u64>,
    /// Per key, processes that `register` added (the kernel counts only what it added).
    adopted: HashMap<u64, i64>,
    /// The host's parent links, for finding descendants.
    procs: ProcTable,
}

/// The loaded and attached programs and their maps. Dropping it detaches the programs.
pub struct Tracker {
    maps: Mutex<Maps>,
    // Owns the programs and their links; kept for its Drop.
    _ebpf: Ebpf,
}

impl Tracker {
    /// Mount tracefs if needed, read this kernel's tracepoint layouts, load the embedded object
    /// with them, and attach every program. Must run inside a tokio runtime (the event stream
    /// registers with its reactor).
    pub fn load() -> Result<(Tracker, EventStream)> {
        tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow!("Tracker::load must run inside a tokio runtime"))?;
        raise_memlock_limit();
        ensure_tracefs()?;
        let offsets = tracefs::read_offsets()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .load(EBPF_OBJECT)
            .context(
                "loading the eBPF object (needs root: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)",
            )?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(watch(l)?),
            Err(e) => {
                tracing::warn!(error = %e, "eBPF log forwarding unavailable");
                None
            }
        };
        for (name, category, event) in PROGRAMS {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading eBPF program {name}"))?;
            prog.attach(category, event)
                .with_context(|| format!("attaching {name} to tracepoint {category}/{event}"))?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let maps = Maps {
            tracked: BpfHashMap::try_from(take(&mut ebpf, "TRACKED")?)?,
            counters: BpfHashMap::try_from(take(&mut ebpf, "COUNTERS")?)?,
            lost: PerCpuArray::try_from(take(&mut ebpf, "LOST")?)?,
            adopted: HashMap::new(),
            procs: ProcTable::default(),
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?)?;
        let events = EventStream {
            ring: watch(ring)?,
            logger,
        };
        Ok((
            Tracker {
                maps: Mutex::new(maps),
                _ebpf: ebpf,
            },
            events,
        ))
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves the maps themselves consistent (they live in
        // the kernel), so a poisoned lock is still usable.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Track `root` and all its current descendants under `key`; from now on the kernel adds
    /// every process they fork. Returns every member found (root first), for the caller to move
    /// into the container's cgroups. Blocking: it scans /proc.
    pub fn register(&self, root: i32, key: u64) -> Result<Vec<i32>> {
        let mut maps = self.maps();
        if let Some(other) = lookup(&maps.tracked, root as u32)? {
            bail!("pid {root} is already tracked (container key {other})");
        }
        let members = track(&mut maps, &[root], key)?;
        if members.first() != Some(&root) {
            forget(&mut maps, key)?;
            bail!("process {root} exited before it could be tracked");
        }
        Ok(members)
    }

    /// Track again, after a daemon restart, the processes `pids` found in a container's cgroup,
    /// and their descendants, under a new `key`. Processes that exited meanwhile are skipped;
    /// an empty result means none is left (the key stays registered, with no live process).
    pub fn readopt(&self, pids: &[i32], key: u64) -> Result<Vec<i32>> {
        track(&mut self.maps(), pids, key)
    }

    /// Forget a container: its counters and any of its processes still tracked.
    pub fn unregister(&self, key: u64) -> Result<()> {
        forget(&mut self.maps(), key)
    }

    /// The counters of `key`, or None if it is not registered.
    pub fn counters(&self, key: u64) -> Result<Option<ProcessCounters>> {
        let maps = self.maps();
        let c = match maps.counters.get(&key, 0) {
            Ok(c) => c,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e).context("reading container counters"),
        };
        let adopted = maps.adopted.get(&key).copied().unwrap_or(0);
        Ok(Some(ProcessCounters {
            forks: c.forks,
            execs: c.execs,
            exits: c.exits,
            live: (c.live + adopted).max(0) as u64,
        }))
    }

    /// The container key `pid` is tracked under.
    pub fn key_of(&self, pid: i32) -> Result<Option<u64>> {
        lookup(&self.maps().tracked, pid as u32)
    }

    /// The processes tracked under `key` (a walk of the whole map: not for hot paths).
    pub fn pids(&self, key: u64) -> Vec<i32> {
        tracked_under(&self.maps(), key)
            .into_iter()
            .map(|p| p as i32)
            .collect()
    }

    /// Events the programs could not put into the ring buffer (it was full).
    pub fn lost_events(&self) -> Result<u64> {
        let values = self
            .maps()
            .lost
            .get(&0, 0)
            .context("reading the lost-events counter")?;
        Ok(values.iter().sum())
    }
}

/// Register `key`, track each of `roots` that still lives, then their descendants. Returns the
/// members found (the live roots first).
fn track(maps: &mut Maps, roots: &[i32], key: u64) -> Result<Vec<i32>> {
    maps.counters
        .insert(key, Counters::default(), 0)
        .with_context(|| format!("creating counters for container key {key}"))?;
    maps.adopted.insert(key, 0);
    let mut members = Vec::new();
    let mut seen = HashSet::new();
    for &pid in roots {
        match adopt(maps, pid, key) {
            Ok(true) if seen.insert(pid) => members.push(pid),
            Ok(_) => {}
            Err(e) => {
                forget(maps, key)?;
                return Err(e);
            }
        }
    }
    if members.is_empty() {
        return Ok(members);
    }
    // Repeat until a whole scan adopts nothing: a process forked by a descendant before that
    // descendant was tracked only shows in a later scan; once a scan adds nothing, every later
    // fork comes from a tracked parent and the kernel takes it.
    loop {
        let mut adopted_any = false;
        maps.procs.refresh()?;
        for pid in maps.procs.descendants(&members) {
            match lookup(&maps.tracked, pid as u32)? {
                // Inside another container (a nested launcher's): it stays there.
                Some(k) if k != key => continue,
                Some(_) => {}
                None if adopt(maps, pid, key)? => adopted_any = true,
                None => continue,
            }
            if seen.insert(pid) {
                members.push(pid);
            }
        }
        if !adopted_any {
            break;
        }
    }
    Ok(members)
}

/// Forget `key`: its counters and any of its processes still tracked.
fn forget(maps: &mut Maps, key: u64) -> Result<()> {
    for pid in tracked_under(maps, key) {
        ignore_missing(maps.tracked.remove(&pid))?;
    }
    ignore_missing(maps.counters.remove(&key))?;
    maps.adopted.remove(&key);
    Ok(())
}

/// The pids tracked under `key`: a walk of the whole map.
fn tracked_under(maps: &Maps, key: u64) -> Vec<u32> {
    maps.tracked
        .iter()
        .filter_map(|kv| kv.ok())
        .filter(|&(_, k)| k == key)
        .map(|(pid, _)| pid)
        .collect()
}

/// Add `pid` to the tracked map under `key` if it is still the live process it was. Returns
/// whether it is tracked now (by us or, in a race, by the fork hook).
fn adopt(maps: &mut Maps, pid: i32, key: u64) -> Result<bool> {
    // Hold the process with a pidfd, so a pid reused after our insert cannot fool the check.
    let Some(pidfd) = pidfd_open(pid)? else {
        return Ok(false);
    };
    match maps.tracked.insert(pid as u32, key, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if is_errno(&e, libc::EEXIST) => return Ok(true),
        Err(e) => return Err(e).with_context(|| format!("tracking pid {pid}")),
    }
    *maps.adopted.entry(key).or_default() += 1;
    if has_exited(&pidfd)? {
        // It exited around our insert. If its entry is still there, the exit hook ran before we
        // added it and will not run again: take it back. If it is gone, the hook counted the exit.
        if maps.tracked.remove(&(pid as u32)).is_ok() {
            *maps.adopted.entry(key).or_default() -= 1;
            return Ok(false);
        }
    }
    Ok(true)
}

fn lookup(map: &BpfHashMap<MapData, u32, u64>, pid: u32) -> Result<Option<u64>> {
    match map.get(&pid, 0) {
        Ok(k) => Ok(Some(k)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e).context("looking up a tracked pid"),
    }
}

fn is_errno(e: &MapError, errno: i32) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(errno))
}

fn ignore_missing(r: Result<(), MapError>) -> Result<()> {
    match r {
        Err(e) if !matches!(e, MapError::KeyNotFound) && !is_errno(&e, libc::ENOENT) => {
            Err(e).context("removing a map entry")
        }
        _ => Ok(()),
    }
}

/// A pidfd for `pid`, or None if there is no such process.
pub fn pidfd_open(pid: i32) -> Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(e).with_context(|| format!("pidfd_open({pid})")),
        };
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Whether the process behind `pidfd` has exited (a pidfd polls readable once it has).
pub fn has_exited(pidfd: &OwnedFd) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error()).context("poll(pidfd)");
    }
    Ok(n > 0 && pfd.revents & libc::POLLIN != 0)
}

fn raise_memlock_limit() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
}

/// Fork/exec/exit events of tracked processes, as an async stream. Also forwards the eBPF
/// programs' own log records (aya-log) while it is polled.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
}

impl EventStream {
    /// Wait for events and append every available one to `out` (at least one).
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        loop {
            let ready = async {
                match &mut self.logger {
                    Some(l) => l.readable_mut().await.map(|mut g| {
                        g.get_inner_mut().flush();
                        g.clear_ready();
                    }),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.ring.readable_mut() => {
                    let mut guard = r?;
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        if let Some(ev) = decode(&item) {
                            out.push(ev);
                        }
                    }
                    guard.clear_ready();
                    if !out.is_empty() {
                        return Ok(());
                    }
                }
                r = ready => r?,
            }
        }
    }
}

/// Register an fd-owning value with tokio's reactor for readability.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (aya's ring buffer and logger keep it open until dropped), and
    // the AsyncFd owns `inner`, so the fd stays open and the same for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

/// An event from ring-buffer bytes; None for a record of the wrong size.
fn decode(bytes: &[u8]) -> Option<Event> {
    (bytes.len() >= size_of::<Event>())
        // SAFETY: Event is plain old data and the length was checked; the read is unaligned-safe.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}
