//! apptheus's eBPF programs: follow the process trees of registered containers.
//!
//! Userspace puts a container's root process into `TRACKED` (tgid -> container key). From then on:
//! - `task/task_newtask` (runs in the parent, knows the clone flags) adds every new *process* whose
//!   parent is tracked, under the parent's key; new threads add nothing.
//! - `sched/sched_process_fork` counts the fork and reports it, for children that are tracked.
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
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;

/// Filled in by userspace at load time from the tracepoints' format files.
#[unsafe(no_mangle)]
static OFFSETS: TracepointOffsets = TracepointOffsets::UNSET;

/// Tracked processes: tgid -> container key.
#[map]
static TRACKED: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

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
    let parent = current_tgid();
    let Some(key) = tracked_key(parent) else {
        return 0;
    };
    let off = offsets();
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let (Ok(flags), Ok(child)) = (unsafe { ctx.read_at::<u64>(off.newtask_clone_flags as usize) }, unsafe {
        ctx.read_at::<i32>(off.newtask_pid as usize)
    }) else {
        warn!(&ctx, "apptheus: cannot read task_newtask fields");
        return 0;
    };
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    // A new thread group leader: its pid is its tgid. NOEXIST, because userspace's walk of a
    // registering tree may have added it first; whoever adds it counts it live, once.
    match TRACKED.insert(&(child as u32), &key, BPF_NOEXIST as u64) {
        Ok(()) => {
            if let Some(c) = COUNTERS.get_ptr_mut(&key) {
                // SAFETY: as in `count`.
                unsafe { add(&raw mut (*c).live, 1i64) };
            }
        }
        Err(e) if e == -EEXIST => {}
        Err(e) => warn!(&ctx, "apptheus: cannot track pid {} of container {}: error {}", child, key, e),
    }
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let off = offsets();
    if off.fork_child_pid == NO_FIELD {
        return 0;
    }
    // SAFETY: offset from this kernel's format file.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(off.fork_child_pid as usize) }) else {
        return 0;
    };
    // Only new processes of tracked parents were added by task_newtask; threads never are.
    let Some(key) = tracked_key(child as u32) else {
        return 0;
    };
    count(&ctx, key, Field::Forks, 0);
    emit(EventKind::Fork, key, child as u32, current_tgid());
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
