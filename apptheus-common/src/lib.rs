//! The `#[repr(C)]` types both sides of apptheus agree on: the load-time configuration handed to
//! the eBPF programs, the values of their maps, and the events they send through the ring buffer.
#![no_std]

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const TASK_COMM_LEN: usize = 16;

/// Capacity the object declares for the map of tracked processes (tgid -> container key);
/// userspace sets the real one at load time from its limits.
pub const MAX_TRACKED_PROCESSES: u32 = 1 << 17;
/// Capacity the object declares for the map of per-container counters; set at load time too.
pub const MAX_CONTAINERS: u32 = 1 << 14;
/// Capacity of the map of threads the OOM killer chose (kills are rare; the LRU drops old ones).
pub const OOM_VICTIMS: u32 = 1024;
/// SIGKILL: how the OOM killer ends its victims (a signal number of the ABI, not kernel layout).
pub const SIGKILL: u32 = 9;
/// Set in `Counters::launcher_exit` once the launcher exited; the low 32 bits are its status.
pub const LAUNCHER_EXITED: u64 = 1 << 32;
/// Bits in one word of the tracked-pid bitmap.
pub const PID_BITS_PER_WORD: u32 = 64;
/// Cgroup levels the network programs look at (root = 0): a container directory deeper than
/// this in the unified tree has no traffic counted. `NET_LEVELS` has one bit per level.
pub const NET_MAX_LEVEL: u32 = 63;

/// Slots of the per-CPU `ERRORS` array: what the programs could not do, counted instead of
/// logged (a fork storm must not become a log storm).
pub mod errors {
    /// An event that found the ring buffer full.
    pub const EVENTS_LOST: u32 = 0;
    /// A new process that found the map of tracked processes full.
    pub const TRACKED_FULL: u32 = 1;
    /// A tracked process whose container had no counters (forgotten meanwhile).
    pub const NO_COUNTERS: u32 = 2;
    /// How many slots there are.
    pub const SLOTS: u32 = 3;
}
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// `CLONE_THREAD` from `<linux/sched.h>`: the new task joins its parent's thread group.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// Offset value meaning "this kernel's tracepoint has no such field".
pub const NO_FIELD: u32 = u32::MAX;

/// Field offsets the programs read, parsed by userspace at load time from the tracepoints'
/// `/sys/kernel/tracing/events/<category>/<event>/format` and the kernel's BTF: layouts differ
/// between kernels, so nothing here is hard-coded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `struct task_struct`: `pid_t tgid`, from the BTF (the fork hook's child is a task).
    pub task_tgid: u32,
    /// `struct task_struct`: `u64 start_time`, from the BTF: taken in copy_process while the
    /// child's cgroups are being fixed (after cgroup_can_fork, before cgroup_post_fork), so a
    /// child that a parent's move missed started before that move ended.
    pub task_start_time: u32,
    /// `sched/sched_process_exit`: `bool group_dead`, or [`NO_FIELD`] on kernels without it.
    pub exit_group_dead: u32,
    /// `oom/mark_victim`: `int pid` (the chosen thread), or [`NO_FIELD`] (program not attached).
    pub mark_victim_pid: u32,
    /// `struct task_struct`: `int exit_code`, from the kernel's BTF, or [`NO_FIELD`] (exit codes
    /// not counted).
    pub task_exit_code: u32,
    /// `struct task_struct`: `struct signal_struct *signal`, from the BTF; read only where
    /// `exit_group_dead` is [`NO_FIELD`], or [`NO_FIELD`] itself.
    pub task_signal: u32,
    /// `struct signal_struct`: `atomic_t live` (the thread group's threads not yet exiting),
    /// from the BTF, or [`NO_FIELD`]. With both, the exit hook knows the group is dead where the
    /// tracepoint does not say (before 6.18); without, it takes the leader's exit for it.
    pub signal_live: u32,
}

impl TracepointOffsets {
    /// The value the object is built with; a program that sees it was not configured.
    pub const UNSET: Self = Self {
        task_tgid: NO_FIELD,
        task_start_time: NO_FIELD,
        exit_group_dead: NO_FIELD,
        mark_victim_pid: NO_FIELD,
        task_exit_code: NO_FIELD,
        task_signal: NO_FIELD,
        signal_live: NO_FIELD,
    };
}

/// Per-container counters kept in kernel space. Userspace writes an entry once, when it
/// registers the container (`launcher` set, the rest zero); from then on only the programs
/// change it, each field with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// New processes (not threads) forked by the container's processes and tracked.
    pub forks: u64,
    /// Successful execve calls by the container's processes.
    pub execs: u64,
    /// Processes of the container that exited (their whole thread group).
    pub exits: u64,
    /// Processes the programs added minus those that exited. Processes that userspace adopted
    /// at registration are counted there, not here, so this can go below zero. The fork hook
    /// tracks no child while it is at the per-container bound.
    pub live: i64,
    /// New processes of the container's processes that were not tracked: the container was at
    /// its bound, or the map of tracked processes was full.
    pub untracked: u64,
    /// Processes of the container that exited with a non-zero code.
    pub failed_exit_code: u64,
    /// Processes of the container that a signal ended.
    pub failed_signal: u64,
    /// Processes of the container that the OOM killer ended.
    pub oom_kills: u64,
    /// 0 while the launcher lives; then [`LAUNCHER_EXITED`] | its wait status (exit code << 8,
    /// or the signal in the low 7 bits).
    pub launcher_exit: u64,
    /// The launcher's process id (tgid), written at registration; 0 for none (a container taken
    /// back after a restart).
    pub launcher: u32,
    pub _pad: u32,
    /// Received by the container's sockets: bytes at the IP layer, and packets.
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// Sent by the container's sockets.
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// What happened to a tracked process.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Fork = 1,
    Exec = 2,
    Exit = 3,
}

/// One ring-buffer record about a tracked process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// The container key the process belongs to.
    pub key: u64,
    /// `CLOCK_MONOTONIC` time of the event (`bpf_ktime_get_ns`); for a fork, the child's start
    /// time ([`TracepointOffsets::task_start_time`]), which bounds when its cgroups were fixed.
    pub ts_ns: u64,
    /// An [`EventKind`] as u32 (a raw integer, so any value from the kernel is safe to read).
    pub kind: u32,
    /// The process: the new child for a fork, the exec'ing or exiting process otherwise.
    pub pid: u32,
    /// The forking process for a fork; 0 otherwise.
    pub ppid: u32,
    pub _pad: u32,
    /// The task's `comm` (NUL-padded).
    pub comm: [u8; TASK_COMM_LEN],
}

impl Event {
    pub fn kind(&self) -> Option<EventKind> {
        match self.kind {
            1 => Some(EventKind::Fork),
            2 => Some(EventKind::Exec),
            3 => Some(EventKind::Exit),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers, no padding holes that carry meaning.
    unsafe impl aya::Pod for super::TracepointOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counters {}
    // SAFETY: as above (`_pad` makes the padding explicit).
    unsafe impl aya::Pod for super::Event {}
}
