//! apptheus's eBPF programs: follow the process trees of registered containers.
//!
//! Userspace puts a container's root process into `TRACKED` (tgid -> container key) and sets its
//! bit in `TRACKED_PIDS`. From then on:
//! - `task/task_newtask` runs in the parent inside copy_process, after its point of no return
//!   and before the child can run, and knows the clone flags: when a tracked process creates a
//!   new *process* (not a thread) the child is tracked under the parent's key, the fork counted
//!   and reported. (`sched_process_fork` comes right after, but it has no clone flags and its
//!   pids are thread ids: one program here does what two did.) It is a raw tracepoint, to read
//!   the child's start time: the event carries that time, not the hook's, because a parent's
//!   move into the container can end between the child's cgroups being fixed and this hook
//!   (a preempted fork), and userspace decides by time whether a child inherited the move.
//! - `sched/sched_process_exec` counts execs of tracked processes.
//! - `sched/sched_process_exit` removes a tracked process when its thread group is gone (not
//!   when its main thread exits: the others may run on, and fork), and counts how it ended (its
//!   exit code, read from the task at a BTF offset): a non-zero code, a signal, the OOM killer;
//!   the launcher's own status is kept for the container.
//! - `oom/mark_victim` notes the thread the OOM killer chose (whichever limit it enforced: the
//!   container's, an ancestor's, the host's), for the exit hook to attribute.
//! - `cgroup_skb/ingress` and `cgroup_skb/egress`, attached once to the root of the unified
//!   (v2) tree, count the bytes and packets of the sockets made in a container's cgroup v2
//!   directory or below it (`NET_CGROUPS`), whatever network namespace they are in. A socket of
//!   no container costs one array read when no container is counted, else one hash lookup per
//!   level at which a container directory exists (`NET_LEVELS`: one or two on a node).
//!
//! Cost: these run for every task on the host, so an untracked task costs one lookup, in
//! `TRACKED_PIDS`, a bitmap indexed by tgid. It is an array (the verifier inlines its lookup: no
//! helper call, no hashing), and consecutive pids share a cache line, where the hash map's
//! buckets, sized for every process the limits allow, spread the host's pids over megabytes:
//! measured on 6.18, a lookup there cost 1.5-1.7x bpftrace's in its 4096-entry map, the bitmap
//! 0.3-1.1x (`cargo xtask bench`).
//! Only a set bit leads to the hash map. Policy lives in userspace (the per-container bound is
//! a load-time global); nothing is logged from here: what a program cannot do is counted, per
//! container (`untracked`) or in `ERRORS`, and userspace reads the counts.
#![no_std]
#![no_main]
// The bpf target has no compare-and-swap, so core's Atomic* types lack fetch_add there; the
// intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use apptheus_common::{
    CLONE_THREAD, Counters, EVENTS_RING_BYTES, Event, EventKind, LAUNCHER_EXITED, MAX_CONTAINERS,
    MAX_TRACKED_PROCESSES, NET_MAX_LEVEL, NO_FIELD, OOM_VICTIMS, PID_BITS_PER_WORD, SIGKILL,
    TASK_COMM_LEN, TracepointOffsets, errors,
};
use aya_ebpf::{
    bindings::{
        BPF_F_MMAPABLE, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_skb_ancestor_cgroup_id,
    },
    macros::{cgroup_skb, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, SkBuffContext, TracePointContext},
};

/// Filled in by userspace at load time from the tracepoints' format files and the kernel's BTF.
#[unsafe(no_mangle)]
static OFFSETS: TracepointOffsets = TracepointOffsets::UNSET;

/// Processes the fork hook tracks in one container besides those userspace adopted at its
/// registration (`Counters::live` counts exactly those); set at load time from the limits.
#[unsafe(no_mangle)]
static PER_CONTAINER: u64 = u64::MAX;

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

/// Processes userspace adopted into each container at its registration (container key ->
/// count), written once it is done: with `Counters::live`, whether a container's last process
/// exited. Sized at load time with `COUNTERS`.
#[map]
static ADOPTED: HashMap<u64, i64> = HashMap::with_max_entries(MAX_CONTAINERS, 0);

/// Threads the OOM killer chose (`oom/mark_victim` gives a thread id, not its process): thread
/// id -> 1, until the exit hook sees that thread exit. LRU: an entry for an untracked victim
/// is never looked at again and must not stay.
#[map]
static OOM_VICTIM_TIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(OOM_VICTIMS, 0);

/// Counted cgroup v2 directories: cgroup id -> container key. Userspace adds a container's
/// directory when it starts counting it and removes it when it stops. Sized at load time with
/// `COUNTERS`.
#[map]
static NET_CGROUPS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_CONTAINERS, 0);

/// Bit `l` set: some directory in `NET_CGROUPS` is at level `l` of the unified tree (root 0).
/// The programs look up a socket's ancestors at those levels only.
#[map]
static NET_LEVELS: Array<u64> = Array::with_max_entries(1, 0);

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
    count_in(c, field, live);
}

/// `count` on counters already looked up.
fn count_in(c: *mut Counters, field: Field, live: i64) {
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

/// Put an event into the ring, at time `ts_ns` or now; `now`: wake the reader at once (the
/// container may have ended).
fn emit(kind: EventKind, key: u64, pid: u32, ppid: u32, ts_ns: Option<u64>, now: bool) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(Event {
                key,
                // SAFETY: helper without preconditions.
                ts_ns: ts_ns.unwrap_or_else(|| unsafe { bpf_ktime_get_ns() }),
                kind: kind as u32,
                pid,
                ppid,
                _pad: 0,
                comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
            });
            entry.submit(wakeup(now));
        }
        None => error(errors::EVENTS_LOST),
    }
}

/// Whether to wake the reader now. A wakeup is an irq_work (a self-interrupt: in a VM, an exit
/// to the hypervisor), measured at 10 us per event here, more than the rest of the program:
/// so the reader polls the ring on a short timer, and is woken only for an event that may end
/// a container (`now`), or when a quarter of the ring is waiting (a fork storm), before it
/// could fill.
fn wakeup(now: bool) -> u64 {
    if now || EVENTS.query(BPF_RB_AVAIL_DATA as u64) > u64::from(EVENTS_RING_BYTES / 4) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// A raw tracepoint: its arguments are `TP_PROTO(struct task_struct *task, u64 clone_flags)`, so
/// the child's start time can be read (the tracepoint's record has only its pid and flags).
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn task_newtask(ctx: RawTracePointContext) -> u32 {
    let parent = current_tgid();
    let Some(key) = tracked_key(parent) else {
        return 0;
    };
    let task: *const u8 = ctx.arg(0);
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let (tgid_at, start_at) = (offset!(task_tgid), offset!(task_start_time));
    // SAFETY: bpf_probe_read_kernel checks the addresses; the offsets are this kernel's (BTF).
    let fields = unsafe {
        (
            bpf_probe_read_kernel(task.wrapping_add(tgid_at as usize).cast::<i32>()),
            bpf_probe_read_kernel(task.wrapping_add(start_at as usize).cast::<u64>()),
        )
    };
    let (Ok(child), Ok(started)) = fields else {
        return 0;
    };
    let Some(c) = COUNTERS.get_ptr_mut(&key) else {
        error(errors::NO_COUNTERS);
        return 0;
    };
    // SAFETY: `c` points into a live map value; `live` is only changed by atomic adds.
    let live = unsafe { core::ptr::read_volatile(&raw const (*c).live) };
    // SAFETY: a plain read of a global that userspace sets before loading (volatile: not the
    // build-time value).
    let bound = unsafe { core::ptr::read_volatile(&raw const PER_CONTAINER) };
    if live >= 0 && live as u64 >= bound {
        // At the container's bound: the child is not tracked. It is in its parent's cgroup,
        // which stays the container's, so its resources are still measured there.
        // SAFETY: as above.
        unsafe { add(&raw mut (*c).untracked, 1) };
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
            // SAFETY: as above.
            unsafe { add(&raw mut (*c).untracked, 1) };
            return 0;
        }
    };
    count_in(c, Field::Forks, live);
    emit(EventKind::Fork, key, child, parent, Some(started), false);
    0
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    let Some(key) = tracked_key(tgid) else {
        return 0;
    };
    count(key, Field::Execs, 0);
    emit(EventKind::Exec, key, tgid, 0, None, false);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(key) = tracked_key(tgid) else {
        return 0;
    };
    let code = exit_code();
    // The OOM killer's victim is a thread: whichever thread of the process it was, its exit.
    // SAFETY: the value is copied out at once.
    if unsafe { OOM_VICTIM_TIDS.get(&tid) }.is_some() {
        let _ = OOM_VICTIM_TIDS.remove(&tid);
        // Killed by it: SIGKILL. A task that was exiting already when the OOM killer picked it
        // (it takes those first) ends with its own status, and is no kill.
        if code.is_none_or(|c| c & 0x7f == SIGKILL)
            && let Some(c) = COUNTERS.get_ptr_mut(&key)
        {
            // SAFETY: `c` points into a live map value, updated only with atomic adds.
            unsafe { add(&raw mut (*c).oom_kills, 1) };
        }
    }
    if !group_dead(&ctx, tid == tgid) {
        return 0;
    }
    // Whoever removes the entry counts the exit, so it is counted once.
    if TRACKED.remove(&tgid).is_ok() {
        mark(tgid, false);
        count(key, Field::Exits, -1);
        if let Some(code) = code {
            ended(key, tgid, code);
        }
        emit(EventKind::Exit, key, tgid, 0, None, last_one(key));
    }
    0
}

/// Whether the exiting thread's group is dead, so the process is gone: the tracepoint's
/// `group_dead` (6.18+); else whether the group's count of live threads is 0 (do_exit decrements
/// it before this tracepoint, and the last thread takes it to 0; a thread exiting along with the
/// last may read 0 too, and the removal from `TRACKED` counts the process once); else, where the
/// kernel's BTF gave no offsets, the leader's exit (`leader`), though other threads may live on.
fn group_dead(ctx: &TracePointContext, leader: bool) -> bool {
    let at = offset!(exit_group_dead);
    if at != NO_FIELD {
        // SAFETY: offset from this kernel's format file.
        return unsafe { ctx.read_at::<u8>(at as usize) }.is_ok_and(|v| v != 0);
    }
    let (signal_at, live_at) = (offset!(task_signal), offset!(signal_live));
    if signal_at == NO_FIELD || live_at == NO_FIELD {
        return leader;
    }
    // SAFETY: helper without preconditions; the result is only used as an address to read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: bpf_probe_read_kernel checks the address; the offset is this kernel's (BTF).
    let signal =
        unsafe { bpf_probe_read_kernel(task.wrapping_add(signal_at as usize).cast::<u64>()) };
    let Ok(signal) = signal else {
        return leader;
    };
    let live = (signal as *const u8)
        .wrapping_add(live_at as usize)
        .cast::<i32>();
    // SAFETY: as above: a checked read at this kernel's offset into the task's signal_struct.
    match unsafe { bpf_probe_read_kernel(live) } {
        Ok(live) => live == 0,
        Err(_) => leader,
    }
}

/// Whether `key` has no tracked process left: its counters' `live` (what the programs added,
/// less every exit) plus what userspace adopted (`ADOPTED`) is zero. Read after this exit was
/// counted; a race with another exit only wakes the reader once more.
fn last_one(key: u64) -> bool {
    let Some(c) = COUNTERS.get_ptr_mut(&key) else {
        return true;
    };
    // SAFETY: `c` points into a live map value; `live` is only changed by atomic adds.
    let live = unsafe { core::ptr::read_volatile(&raw const (*c).live) };
    // SAFETY: the value is copied out at once.
    let adopted = unsafe { ADOPTED.get(&key) }.copied().unwrap_or(0);
    live + adopted <= 0
}

/// The current task's `exit_code` (set before this tracepoint: the wait status, `code << 8` or
/// the signal, as a parent's wait() gets it), or None where the kernel's BTF has no such field.
/// For a process that ends by exit_group or a fatal signal, every thread carries the group's
/// status, so the last thread's is the process's.
fn exit_code() -> Option<u32> {
    let at = offset!(task_exit_code);
    if at == NO_FIELD {
        return None;
    }
    // SAFETY: helper without preconditions; the result is only used as an address to read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: bpf_probe_read_kernel checks the address; the offset is this kernel's (BTF).
    unsafe { bpf_probe_read_kernel(task.wrapping_add(at as usize).cast::<i32>()) }
        .ok()
        .map(|c| c as u32)
}

/// Count how a process of `key` ended; keep the launcher's status.
fn ended(key: u64, tgid: u32, code: u32) {
    let Some(c) = COUNTERS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: `c` points into a live map value, updated only with atomic adds; `launcher` is
    // written once, by userspace, before the container's processes are tracked.
    unsafe {
        if code & 0x7f != 0 {
            add(&raw mut (*c).failed_signal, 1);
        } else if (code >> 8) & 0xff != 0 {
            add(&raw mut (*c).failed_exit_code, 1);
        }
        // The launcher exits once, so one add sets it.
        if core::ptr::read_volatile(&raw const (*c).launcher) == tgid {
            add(
                &raw mut (*c).launcher_exit,
                LAUNCHER_EXITED | u64::from(code),
            );
        }
    }
}

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let at = offset!(mark_victim_pid);
    // SAFETY: offset from this kernel's format file for this tracepoint.
    if let Ok(tid) = unsafe { ctx.read_at::<i32>(at as usize) } {
        let _ = OOM_VICTIM_TIDS.insert(&(tid as u32), &1, 0);
    }
    0
}

#[cgroup_skb(ingress)]
pub fn net_ingress(ctx: SkBuffContext) -> i32 {
    net_count(&ctx, true);
    // Count, never filter.
    1
}

#[cgroup_skb(egress)]
pub fn net_egress(ctx: SkBuffContext) -> i32 {
    net_count(&ctx, false);
    1
}

/// Add one skb (a GSO aggregate counts as its segments) to each container whose directory
/// holds its socket's cgroup (a nested container's traffic is also its outer one's).
fn net_count(ctx: &SkBuffContext, ingress: bool) {
    let Some(levels) = NET_LEVELS.get(0) else {
        return;
    };
    let levels = *levels;
    if levels == 0 {
        return;
    }
    let bytes = u64::from(ctx.len());
    // SAFETY: the program's context; the verifier allows reading gso_segs of a cgroup skb.
    let packets = u64::from(unsafe { (*ctx.skb.skb).gso_segs }.max(1));
    let mut level = 0;
    while level <= NET_MAX_LEVEL {
        if levels >> level & 1 != 0 {
            // SAFETY: the helper reads the skb's socket's cgroup; 0 when the socket is not
            // a full one or its cgroup is shallower than `level`.
            let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, level as i32) };
            if id == 0 {
                return;
            }
            // SAFETY: a plain read of a map value.
            if let Some(key) = unsafe { NET_CGROUPS.get(&id) }
                && let Some(c) = COUNTERS.get_ptr_mut(key)
            {
                // SAFETY: `c` points into a live map value, updated only with atomic adds.
                unsafe {
                    if ingress {
                        add(&raw mut (*c).rx_bytes, bytes);
                        add(&raw mut (*c).rx_packets, packets);
                    } else {
                        add(&raw mut (*c).tx_bytes, bytes);
                        add(&raw mut (*c).tx_packets, packets);
                    }
                }
            }
        }
        level += 1;
    }
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
