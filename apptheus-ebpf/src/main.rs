//! apptheus's eBPF programs: follow the process trees of registered containers.
//!
//! Userspace puts a container's root process into `TRACKED` (tgid -> container key). From then on:
//! - `task/task_newtask` runs in the parent inside copy_process and knows the clone flags: when a
//!   tracked process creates a new *process* (not a thread) it marks the child `PENDING`.
//! - `sched/sched_process_fork` runs right after, before the child can run: it moves a pending
//!   child into `TRACKED` under the parent's key, counts the fork and reports it. (It has no clone
//!   flags itself, and its pids are thread ids, so it cannot tell a thread from a process alone.)
//! - `sched/sched_process_exec` counts execs of tracked processes.
//! - `sched/sched_process_exit` removes a tracked process when its thread group is gone.
//!
//! Each hook costs an untracked task exactly one hash lookup. Policy lives in userspace.
#![no_std]
#![no_main]
// The bpf target has no compare-and-swap, so core's Atomic* types lack fetch_add there; the
// intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use apptheus_common::{
    CLONE_THREAD, Counters, EVENTS_RING_BYTES, Event, EventKind, MAX_CONTAINERS,
    MAX_TRACKED_PROCESSES, NO_FIELD, TASK_COMM_LEN, TracepointOffsets,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;

/// Filled in by userspace at load time from the tracepoints' format files.
#[unsafe(no_mangle)]
static OFFSETS: TracepointOffsets = TracepointOffsets::UNSET;

/// Tracked processes: tgid -> container key.
#[map]
static TRACKED: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// New processes of tracked parents between task_newtask and sched_process_fork: child pid ->
/// key. LRU so that an entry can never leak for good.
#[map]
static PENDING: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Per-container counters; userspace creates the entry when it registers the container.
#[map]
static COUNTERS: HashMap<u64, Counters> = HashMap::with_max_entries(MAX_CONTAINERS, 0);

/// Fork/exec/exit events of tracked processes.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Events that could not be reserved in `EVENTS` (slot 0, per CPU).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const EEXIST: i32 = 17;

fn offsets() -> TracepointOffsets {
    // SAFETY: a plain read of a global that userspace sets before loading; volatile so the
    // compiler does not fold in the build-time value.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

fn tracked_key(tgid: u32) -> Option<u64> {
    // SAFETY: the value is copied out at once.
    unsafe { TRACKED.get(&tgid) }.copied()
}

/// Atomic `*dst += v` on a map value.
///
/// # Safety
/// `dst` must point into a live map value.
unsafe fn add<T: Copy>(dst: *mut T, v: T) {
    // SAFETY: the caller guarantees `dst` is valid; the kernel supports 64-bit atomic add.
    unsafe { atomic_xadd::<T, T, { AtomicOrdering::Relaxed }>(dst, v) };
}

enum Field {
    Forks,
    Execs,
    Exits,
}

/// Atomically bump one counter of `key` and adjust its live-process count by `live`.
fn count(ctx: &TracePointContext, key: u64, field: Field, live: i64) {
    let Some(c) = COUNTERS.get_ptr_mut(&key) else {
        warn!(ctx, "apptheus: no counters for container key {}", key);
        return;
    };
    // SAFETY: `c` points into a live map value; the kernel keeps it valid for this program run,
    // and every writer updates it with atomic adds.
    unsafe {
        let p = match field {
            Field::Forks => &raw mut (*c).forks,
            Field::Execs => &raw mut (*c).execs,
            Field::Exits => &raw mut (*c).exits,
        };
        add(p, 1);
        if live != 0 {
            add(&raw mut (*c).live, live);
        }
    }
}

fn emit(kind: EventKind, key: u64, pid: u32, ppid: u32) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                key,
                // SAFETY: helper without preconditions.
                ts_ns: unsafe { bpf_ktime_get_ns() },
                kind: kind as u32,
                pid,
                ppid,
                _pad: 0,
                comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
            });
            entry.submit(0);
        }
        None => {
            if let Some(lost) = LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot; no other CPU writes it.
                unsafe { *lost += 1 };
            }
        }
    }
}

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let Some(key) = tracked_key(current_tgid()) else {
        return 0;
    };
    let off = offsets();
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(off.newtask_clone_flags as usize),
            ctx.read_at::<i32>(off.newtask_pid as usize),
        )
    };
    let (Ok(flags), Ok(child)) = fields else {
        warn!(&ctx, "apptheus: cannot read task_newtask fields");
        return 0;
    };
    if flags & CLONE_THREAD == 0 && PENDING.insert(&(child as u32), &key, 0).is_err() {
        warn!(
            &ctx,
            "apptheus: cannot mark new process {} of container {}", child, key
        );
    }
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    // Only a tracked process's children can be pending (current is the forking parent): every
    // other fork on the host costs one lookup in the plain hash map, not one in the LRU map.
    if tracked_key(current_tgid()).is_none() {
        return 0;
    }
    let off = offsets();
    // SAFETY: offset from this kernel's format file.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(off.fork_child_pid as usize) }) else {
        return 0;
    };
    let child = child as u32;
    // SAFETY: the value is copied out at once.
    let Some(key) = (unsafe { PENDING.get(&child) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(&child);
    // NOEXIST: userspace's walk of a registering tree may have added the child first; whoever
    // adds it counts it live, once.
    let live = match TRACKED.insert(&child, &key, BPF_NOEXIST as u64) {
        Ok(()) => 1,
        Err(e) if e == -EEXIST => 0,
        Err(e) => {
            warn!(
                &ctx,
                "apptheus: cannot track pid {} of container {}: error {}", child, key, e
            );
            0
        }
    };
    count(&ctx, key, Field::Forks, live);
    emit(EventKind::Fork, key, child, current_tgid());
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    let Some(key) = tracked_key(tgid) else {
        return 0;
    };
    count(&ctx, key, Field::Execs, 0);
    emit(EventKind::Exec, key, tgid, 0);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(key) = tracked_key(tgid) else {
        return 0;
    };
    let off = offsets();
    // The process is gone when its last thread exits (`group_dead`). Kernels without that field
    // only tell us the leader exited, which is the best available signal there.
    let process_gone = if off.exit_group_dead == NO_FIELD {
        tid == tgid
    } else {
        // SAFETY: offset from this kernel's format file.
        unsafe { ctx.read_at::<u8>(off.exit_group_dead as usize) }.is_ok_and(|v| v != 0)
    };
    if !process_gone {
        return 0;
    }
    // Whoever removes the entry counts the exit, so it is counted once.
    if TRACKED.remove(&tgid).is_ok() {
        count(&ctx, key, Field::Exits, -1);
        emit(EventKind::Exit, key, tgid, 0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// Keep the shared constants referenced so a mismatch breaks the build here, not at load time.
const _: () = assert!(MAX_CONTAINERS > 0 && EVENTS_RING_BYTES.is_power_of_two());
