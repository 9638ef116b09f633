//! apptheus's eBPF programs: follow the process trees of registered containers.
//!
//! Userspace puts a container's root process into `TRACKED` (tgid -> container key) and sets its
//! bit in `TRACKED_PIDS`. From then on:
//! - `task/task_newtask` runs in the parent inside copy_process, after its point of no return
//!   and before the child can run, and knows the clone flags: when a tracked process creates a
//!   new *process* (not a thread) the child is tracked under the parent's key, the fork counted
//!   and reported. (`sched_process_fork` comes right after, but it has no clone flags and its
//!   pids are thread ids: one program here does what two did.)
//! - `sched/sched_process_exec` counts execs of tracked processes.
//! - `sched/sched_process_exit` removes a tracked process when its thread group is gone.
//!
//! Cost: these run for every task on the host, so an untracked task costs one lookup, in
//! `TRACKED_PIDS`, a bitmap indexed by tgid. It is an array (the verifier inlines its lookup: no
//! helper call, no hashing), and consecutive pids share a cache line, where the hash map's
//! buckets, sized for every process the limits allow, spread the host's pids over megabytes:
//! measured, a lookup there cost 1.5x bpftrace's in a 4096-entry map, the bitmap less than one.
//! Only a set bit leads to the hash map. Policy lives in userspace; nothing is logged from
//! here: what a program cannot do is counted in `ERRORS`.
#![no_std]
#![no_main]
// The bpf target has no compare-and-swap, so core's Atomic* types lack fetch_add there; the
// intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use apptheus_common::{
    CLONE_THREAD, Counters, EVENTS_RING_BYTES, Event, EventKind, MAX_CONTAINERS,
    MAX_TRACKED_PROCESSES, NO_FIELD, PID_BITS_PER_WORD, TASK_COMM_LEN, TracepointOffsets, errors,
};
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};

/// Filled in by userspace at load time from the tracepoints' format files.
#[unsafe(no_mangle)]
static OFFSETS: TracepointOffsets = TracepointOffsets::UNSET;

/// Tracked processes: tgid -> container key. Sized at load time from the daemon's limits.
#[map]
static TRACKED: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// One bit per tgid, set while the tgid is in `TRACKED` (word `tgid / 64`, bit `tgid % 64`);
/// sized at load time from the host's pid_max. Userspace maps it (`BPF_F_MMAPABLE`) and sets
/// and clears its bits with atomic or/and; here bits change by atomic add (BPF's atomic or/and
/// need 5.12), only after checking the bit, so that no carry can reach a neighbour.
#[map]
static TRACKED_PIDS: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Per-container counters; userspace creates the entry when it registers the container.
#[map]
static COUNTERS: HashMap<u64, Counters> = HashMap::with_max_entries(MAX_CONTAINERS, 0);

/// Fork/exec/exit events of tracked processes.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// What the programs could not do (slots in `apptheus_common::errors`), per CPU.
#[map]
static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(errors::SLOTS, 0);

const EEXIST: i32 = 17;

/// One field of `OFFSETS`. Each field is read on its own, volatile so that the compiler does not
/// fold in the build-time value; the kernel knows the global is frozen and reads it as a constant.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a plain read of a field of a global that userspace sets before loading.
        unsafe { core::ptr::read_volatile(&raw const OFFSETS.$field) }
    };
}

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Whether `tgid` may be tracked: its bit, or true for a tgid past the bitmap (pid_max raised
/// after the daemon started), which the hash map then decides.
#[inline(always)]
fn may_be_tracked(tgid: u32) -> bool {
    match TRACKED_PIDS.get(tgid / PID_BITS_PER_WORD) {
        // SAFETY: the word is read once; a racing update is either seen or not, both fine.
        Some(word) => (unsafe { core::ptr::read_volatile(word) } & bit(tgid)) != 0,
        None => true,
    }
}

fn bit(tgid: u32) -> u64 {
    1 << (tgid % PID_BITS_PER_WORD)
}

/// Set (`on`) or clear the bit of `tgid`, if it is not so already.
fn mark(tgid: u32, on: bool) {
    let Some(word) = TRACKED_PIDS.get_ptr_mut(tgid / PID_BITS_PER_WORD) else {
        return;
    };
    let b = bit(tgid);
    // SAFETY: `word` points into the array's value; adds are atomic, and only the one that
    // inserted (or removed) the tgid's entry changes its bit, so the check cannot go stale.
    unsafe {
        let set = core::ptr::read_volatile(word) & b != 0;
        if on && !set {
            add(word, b);
        } else if !on && set {
            add(word, b.wrapping_neg());
        }
    }
}

fn tracked_key(tgid: u32) -> Option<u64> {
    if !may_be_tracked(tgid) {
        return None;
    }
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

/// Count one `errors` slot on this CPU.
fn error(slot: u32) {
    if let Some(n) = ERRORS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; no other CPU writes it.
        unsafe { *n += 1 };
    }
}

enum Field {
    Forks,
    Execs,
    Exits,
}

/// Atomically bump one counter of `key` and adjust its live-process count by `live`.
fn count(key: u64, field: Field, live: i64) {
    let Some(c) = COUNTERS.get_ptr_mut(&key) else {
        error(errors::NO_COUNTERS);
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
        None => error(errors::EVENTS_LOST),
    }
}

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let parent = current_tgid();
    let Some(key) = tracked_key(parent) else {
        return 0;
    };
    let (flags_at, pid_at) = (offset!(newtask_clone_flags), offset!(newtask_pid));
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(flags_at as usize),
            ctx.read_at::<i32>(pid_at as usize),
        )
    };
    let (Ok(flags), Ok(child)) = fields else {
        return 0;
    };
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let child = child as u32;
    // NOEXIST: userspace's walk of a registering tree may have added the child first; whoever
    // adds it counts it live, once.
    let live = match TRACKED.insert(&child, &key, BPF_NOEXIST as u64) {
        Ok(()) => {
            mark(child, true);
            1
        }
        Err(e) if e == -EEXIST => 0,
        Err(_) => {
            error(errors::TRACKED_FULL);
            return 0;
        }
    };
    count(key, Field::Forks, live);
    emit(EventKind::Fork, key, child, parent);
    0
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    let Some(key) = tracked_key(tgid) else {
        return 0;
    };
    count(key, Field::Execs, 0);
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
    let group_dead = offset!(exit_group_dead);
    // The process is gone when its last thread exits (`group_dead`). Kernels without that field
    // only tell us the leader exited, which is the best available signal there.
    let process_gone = if group_dead == NO_FIELD {
        tid == tgid
    } else {
        // SAFETY: offset from this kernel's format file.
        unsafe { ctx.read_at::<u8>(group_dead as usize) }.is_ok_and(|v| v != 0)
    };
    if !process_gone {
        return 0;
    }
    // Whoever removes the entry counts the exit, so it is counted once.
    if TRACKED.remove(&tgid).is_ok() {
        mark(tgid, false);
        count(key, Field::Exits, -1);
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
