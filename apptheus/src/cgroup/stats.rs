//! The counters of a container's cgroup, read from its files.
//!
//! A container's numbers come from the v1 hierarchy of a controller where there is one, else
//! from its v2 directory when the controller is enabled there; v1 and v2 differ only in the
//! files' names and keys. When no memory or pids controller covers the container (v2 forbids
//! enabling a controller below a cgroup that holds processes), those numbers are computed from
//! the container's processes instead.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    ContainerCgroup,
    container::Member,
    files,
    layout::Version,
    parse::{self, IoBytes},
    probe,
};
use crate::collectors::{Collector, Collectors};

/// One sample of a container's counters, by resource. A group is `None` when its collector
/// group is disabled, its controller missing, or none of its files gave a number (never
/// `Some` with every field `None`: the sampler compares samples to see a change); a field is
/// `None` when its file was missing, unreadable or garbled, or when the kernel keeps no such
/// number.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub pids: Option<Pids>,
    /// Block I/O: both directions come from one file.
    pub io: Option<Io>,
    /// PSI of the container's v2 directory: cpu.pressure, memory.pressure, io.pressure. The
    /// unified tree keeps them in every non-root cgroup, with or without controllers (on hybrid
    /// hosts too); each `None` without a unified tree or with PSI off (`psi=0`, or kernels built
    /// with CONFIG_PSI_DEFAULT_DISABLED and no `psi=1`).
    pub pressure: Pressures,
    /// CFS bandwidth of the container's own cgroup: v1 cpu.stat of the cpu hierarchy, v2
    /// cpu.stat where the cpu controller is enabled.
    pub throttling: Option<Throttling>,
    /// Memory events of the container's memory cgroup.
    pub memory_events: Option<MemoryEvents>,
}

/// The CPU times of a container's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    /// v1 cpuacct.usage; v2 cpu.stat usage_usec.
    pub usage_seconds: Option<f64>,
    /// v1 cpuacct.usage_user, else cpuacct.stat user (USER_HZ ticks); v2 cpu.stat user_usec.
    pub user_seconds: Option<f64>,
    /// v1 cpuacct.usage_sys, else cpuacct.stat system; v2 cpu.stat system_usec.
    pub system_seconds: Option<f64>,
}

/// A container's memory: of its memory cgroup, or of its processes without one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// v1 memory.usage_in_bytes; v2 memory.current; processes: sum of resident memory.
    pub usage_bytes: Option<u64>,
    /// Usage minus inactive file cache (v1 total_inactive_file, v2 inactive_file).
    pub working_set_bytes: Option<u64>,
    /// v1 memory.stat total_rss (includes huge pages); v2 memory.stat anon; processes: sum of
    /// anonymous resident memory.
    pub rss_bytes: Option<u64>,
    /// v1 memory.stat total_cache; v2 memory.stat file.
    pub cache_bytes: Option<u64>,
    /// v1 memory.stat total_swap (else memsw usage minus usage); v2 memory.swap.current.
    /// `None` where the kernel accounts no swap.
    pub swap_bytes: Option<u64>,
    /// v1 memory.max_usage_in_bytes; v2 memory.peak (Linux 5.19+).
    pub max_usage_bytes: Option<u64>,
    /// The smallest memory limit of the container and its ancestors (v1
    /// memory.limit_in_bytes, v2 memory.max; its ancestors' only, without a memory controller
    /// of its own); `None` when unlimited.
    pub limit_bytes: Option<u64>,
}

/// A container's tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pids {
    /// pids.current; without a pids controller, the tasks the cgroup lists.
    pub current: Option<u64>,
    /// The smallest pids.max of the container and its ancestors (its ancestors' only, without a
    /// pids controller of its own); `None` when unlimited.
    pub limit: Option<u64>,
}

/// Block I/O bytes, summed over devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    /// v1 blkio throttle service bytes, Read lines; v2 io.stat rbytes.
    pub read_bytes: u64,
    /// Likewise for writes (Write lines, wbytes).
    pub write_bytes: u64,
}

/// The PSI totals of the three resources.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressures {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
}

/// The PSI totals of one resource.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    /// PSI "some": time in which at least one of the container's tasks waited for the resource.
    pub waiting_seconds: f64,
    /// PSI "full": time in which all its non-idle tasks waited at once; `None` where the
    /// kernel keeps none (cpu before Linux 5.13).
    pub stalled_seconds: Option<f64>,
}

/// The CFS bandwidth counters of one cgroup. They move only where a quota is set on that very
/// cgroup: a quota on an ancestor throttles the container without counting here.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Throttling {
    /// Enforcement periods that elapsed while the cgroup had runnable tasks.
    pub periods: u64,
    /// Periods in which the cgroup used up its quota and was throttled.
    pub throttled_periods: u64,
    /// Time its tasks were throttled (v1 throttled_time, ns; v2 throttled_usec).
    pub throttled_seconds: f64,
}

/// Memory events where the kernel counts them; each `None` where it does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// v2 `high`: times the usage went over memory.high and was throttled. v1 has no high
    /// limit.
    pub high: Option<u64>,
    /// v2 `max`: times the usage was about to go over memory.max. v1: memory.failcnt plus
    /// memory.memsw.failcnt (where swap is accounted), the failed charges against the
    /// cgroup's own limits; a little higher than v2's count for the same history, since a
    /// charge that is retried in smaller pieces fails more than once. Recent kernels (seen on
    /// 6.18) keep memsw's failcnt at 0: a charge failing against a memory+swap limit is then
    /// counted nowhere.
    pub max: Option<u64>,
    /// v2 `oom`: times the OOM killer was about to be invoked. v1 counts no such event
    /// (memory.oom_control's `under_oom` is a state, its `oom_kill` counts kills).
    pub oom: Option<u64>,
}

/// A group's values with `older`'s where these have none, field by field.
trait Or: Sized {
    fn or(self, older: Self) -> Self;
}

/// Two samples of a group: field by field where both have it, else whichever has it.
fn or_group<T: Or>(new: Option<T>, older: Option<T>) -> Option<T> {
    match (new, older) {
        (Some(new), Some(older)) => Some(new.or(older)),
        (new, older) => new.or(older),
    }
}

impl Or for Cpu {
    fn or(self, older: Cpu) -> Cpu {
        Cpu {
            usage_seconds: self.usage_seconds.or(older.usage_seconds),
            user_seconds: self.user_seconds.or(older.user_seconds),
            system_seconds: self.system_seconds.or(older.system_seconds),
        }
    }
}

impl Or for Memory {
    fn or(self, older: Memory) -> Memory {
        Memory {
            usage_bytes: self.usage_bytes.or(older.usage_bytes),
            working_set_bytes: self.working_set_bytes.or(older.working_set_bytes),
            rss_bytes: self.rss_bytes.or(older.rss_bytes),
            cache_bytes: self.cache_bytes.or(older.cache_bytes),
            swap_bytes: self.swap_bytes.or(older.swap_bytes),
            max_usage_bytes: self.max_usage_bytes.or(older.max_usage_bytes),
            limit_bytes: self.limit_bytes.or(older.limit_bytes),
        }
    }
}

impl Or for Pids {
    fn or(self, older: Pids) -> Pids {
        Pids {
            current: self.current.or(older.current),
            limit: self.limit.or(older.limit),
        }
    }
}

impl Or for MemoryEvents {
    fn or(self, older: MemoryEvents) -> MemoryEvents {
        MemoryEvents {
            high: self.high.or(older.high),
            max: self.max.or(older.max),
            oom: self.oom.or(older.oom),
        }
    }
}

impl Stats {
    /// These values, with `older`'s where these have none: for a container that ended, whose
    /// directories a batch system may be removing while they are read.
    pub fn or(self, older: &Stats) -> Stats {
        Stats {
            cpu: or_group(self.cpu, older.cpu),
            memory: or_group(self.memory, older.memory),
            pids: or_group(self.pids, older.pids),
            io: self.io.or(older.io),
            pressure: Pressures {
                cpu: self.pressure.cpu.or(older.pressure.cpu),
                memory: self.pressure.memory.or(older.pressure.memory),
                io: self.pressure.io.or(older.pressure.io),
            },
            throttling: self.throttling.or(older.throttling),
            memory_events: or_group(self.memory_events, older.memory_events),
        }
    }
}

/// `Some(group)` unless every field of it is `None` (a group is one `None` when absent).
fn some_if<T: Default + PartialEq>(group: T) -> Option<T> {
    (group != T::default()).then_some(group)
}

/// The container's total CPU time in the kernel's own unit (v1 cpuacct.usage, ns; v2 cpu.stat
/// usage_usec): the cheapest sign of whether any of its processes ran. On v2 the same read
/// gives the user and system times, which a full read then takes from here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Probe {
    pub value: Option<u64>,
    cpu: Option<parse::V2CpuStat>,
}

/// The files of a memory controller, by version. Everything else about memory is the same.
struct MemoryFiles {
    usage: &'static str,
    peak: &'static str,
    limit: &'static str,
    parse_stat: fn(&str) -> anyhow::Result<parse::MemoryStat>,
}

impl Version {
    fn memory_files(self) -> MemoryFiles {
        match self {
            Version::V1 => MemoryFiles {
                usage: "memory.usage_in_bytes",
                peak: "memory.max_usage_in_bytes",
                limit: "memory.limit_in_bytes",
                parse_stat: parse::parse_v1_memory_stat,
            },
            Version::V2 => MemoryFiles {
                usage: "memory.current",
                // Linux 5.19+.
                peak: "memory.peak",
                limit: "memory.max",
                parse_stat: parse::parse_v2_memory_stat,
            },
        }
    }
}

/// How long the ancestors' smallest limit is reused. Every container under a job shares its
/// ancestors: with 1,000 containers, walking up for each one read the same few files 1,000
/// times per pass. An ancestor's new limit shows within this time; a container's own limit is
/// read at every full read.
const ANCESTORS_TTL: Duration = Duration::from_secs(1);

/// A limit found along a cgroup's path: a limit file, or the CFS quota.
#[derive(Clone, Copy)]
enum Limit {
    /// memory.max, memory.limit_in_bytes, pids.max: bytes or tasks, "max" or huge for none.
    File(&'static str),
    /// The CFS quota as a number of CPUs, in millionths: v1 cpu.cfs_quota_us over
    /// cpu.cfs_period_us, v2 cpu.max.
    CpuQuota(Version),
}

impl Limit {
    /// The file that names this limit in the ancestors' cache.
    fn file(self) -> &'static str {
        match self {
            Limit::File(file) => file,
            Limit::CpuQuota(Version::V1) => "cpu.cfs_quota_us",
            Limit::CpuQuota(Version::V2) => "cpu.max",
        }
    }
}

/// Millionths of a CPU in a quota of `quota` microseconds per `period`.
fn micro_cpus(quota: u64, period: u64) -> u64 {
    let micro = u128::from(quota) * 1_000_000 / u128::from(period.max(1));
    u64::try_from(micro).unwrap_or(u64::MAX)
}

/// Reads containers' cgroup files. The sampler keeps one: it holds the buffer every file is
/// read into (no allocation per file once grown) and the ancestors' limits, shared by the
/// containers below them.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    /// The probes' buffer, kept initialized between reads (see `probe::pread_all`).
    probe_buf: Vec<u8>,
    /// `<ancestor dir>/<limit file>` -> (when read, smallest limit up to the mount point).
    ancestors: BTreeMap<PathBuf, (Instant, Option<u64>)>,
    /// The groups whose files are read; a disabled one's files are never opened.
    collectors: Collectors,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    /// A reader that skips the files of the disabled groups.
    pub fn with_collectors(collectors: Collectors) -> Reader {
        Reader {
            collectors,
            ..Reader::default()
        }
    }

    fn read<T>(&mut self, path: &Path, parse: impl FnOnce(&str) -> anyhow::Result<T>) -> Option<T> {
        files::read_parsed_with(path, &mut self.buf, parse)
    }

    /// Reads the container's CPU probe (see [`Probe`]).
    /// The file stays open in `cgroup` for the next pass (see `probe`): an idle v1 container
    /// costs one pread, no path and no allocation.
    pub fn probe(&mut self, cgroup: &ContainerCgroup) -> Probe {
        if let Some(probe) = cgroup.probe.read_open(&mut self.probe_buf, parse_probe) {
            return probe;
        }
        let (dir, kind) = match cgroup.v1_member("cpuacct") {
            Some(member) => (member.dir.join("cpuacct.usage"), probe::Kind::V1Usage),
            None => match cgroup.v2_member() {
                Some(member) => (member.dir.join("cpu.stat"), probe::Kind::V2CpuStat),
                None => return Probe::default(),
            },
        };
        cgroup
            .probe
            .read_path(&dir, kind, &mut self.probe_buf, |text| {
                parse_probe(kind, text)
            })
            .unwrap_or_default()
    }

    /// Reads every file of the container. Every file is read on its own: a bad file leaves
    /// only its fields `None`. `probe` is this pass's probe, whose CPU times are not read again.
    pub fn read_all(&mut self, cgroup: &ContainerCgroup, probe: &Probe) -> Stats {
        // The probe's v2 cpu.stat has the CPU times (and the bandwidth counters): not read again.
        let (cpu, read_now) = match &probe.cpu {
            Some(stat) => (cpu_v2(stat), None),
            None => self.sample_cpu(cgroup),
        };
        let v2_cpu = probe.cpu.as_ref().or(read_now.as_ref());
        let mut stats = Stats {
            cpu,
            ..Stats::default()
        };
        stats.memory = self.sample_memory(cgroup);
        stats.pids = self.sample_pids(cgroup);
        if self.collectors.enabled(Collector::Io) {
            stats.io = self.sample_io(cgroup);
        }
        if self.collectors.enabled(Collector::Throttling) {
            stats.throttling = self.throttling(cgroup, v2_cpu);
        }
        if self.collectors.enabled(Collector::Pressure) {
            stats.pressure = self.sample_pressure(cgroup);
        }
        if self.collectors.enabled(Collector::MemoryEvents) {
            stats.memory_events = self.memory_events(cgroup);
        }
        stats
    }

    /// Reads again what can move while none of the container's processes runs, into `stats`
    /// (the last full read): memory (reclaim, swap-out) and its limit, the pids and their
    /// limit (limits can be changed by an administrator), and block I/O (dirty pages written
    /// back later are charged to the cgroup). CPU times, PSI, throttling and memory events
    /// move only while its tasks run or wait, which the probe would have shown. About half of
    /// a full read's files.
    pub fn read_idle(&mut self, cgroup: &ContainerCgroup, stats: &mut Stats) {
        stats.memory = self.sample_memory(cgroup);
        stats.pids = self.sample_pids(cgroup);
        if self.collectors.enabled(Collector::Io) {
            stats.io = self.sample_io(cgroup);
        }
    }

    /// Reads every file of the container, the probe's included (the tests' reading; the
    /// sampler reads through `read_all` with its probe).
    #[cfg(test)]
    pub fn sample(&mut self, cgroup: &ContainerCgroup) -> Stats {
        self.read_all(cgroup, &Probe::default())
    }

    /// The CPU times; on v2, also the cpu.stat read for them (its bandwidth counters).
    fn sample_cpu(&mut self, cgroup: &ContainerCgroup) -> (Option<Cpu>, Option<parse::V2CpuStat>) {
        if let Some(member) = cgroup.v1_member("cpuacct") {
            return (some_if(self.sample_cpu_v1(&member.dir)), None);
        }
        // The kernel keeps cpu.stat's times in every v2 cgroup, with or without the cpu
        // controller.
        let Some(member) = cgroup.v2_member() else {
            return (None, None);
        };
        let Some(stat) = self.read(&member.dir.join("cpu.stat"), parse::parse_v2_cpu_stat) else {
            return (None, None);
        };
        (cpu_v2(&stat), Some(stat))
    }

    /// CFS bandwidth counters: v1 cpu.stat of the cpu hierarchy (one more file), else the
    /// counters of the v2 cpu.stat already read for the CPU times (no file of its own), which
    /// the kernel writes only where the cpu controller is enabled.
    fn throttling(
        &mut self,
        cgroup: &ContainerCgroup,
        v2_cpu: Option<&parse::V2CpuStat>,
    ) -> Option<Throttling> {
        if let Some(member) = cgroup.v1_member("cpu") {
            let cpu = self.read(&member.dir.join("cpu.stat"), parse::parse_v1_cpu_stat)?;
            return Some(Throttling {
                periods: cpu.nr_periods?,
                throttled_periods: cpu.nr_throttled?,
                throttled_seconds: nanoseconds_to_seconds(cpu.throttled_time_ns?),
            });
        }
        let cpu = v2_cpu?;
        Some(Throttling {
            periods: cpu.nr_periods?,
            throttled_periods: cpu.nr_throttled?,
            throttled_seconds: microseconds_to_seconds(cpu.throttled_usec?),
        })
    }

    /// PSI, from the container's directory in the unified tree: three small files.
    fn sample_pressure(&mut self, cgroup: &ContainerCgroup) -> Pressures {
        let Some(member) = cgroup.v2_member() else {
            return Pressures::default();
        };
        let dir = &member.dir;
        let mut pressure = |file: &str| {
            let totals = self.read(&dir.join(file), parse::parse_pressure)?;
            Some(Pressure {
                waiting_seconds: microseconds_to_seconds(totals.some_usec),
                stalled_seconds: totals.full_usec.map(microseconds_to_seconds),
            })
        };
        Pressures {
            cpu: pressure("cpu.pressure"),
            memory: pressure("memory.pressure"),
            io: pressure("io.pressure"),
        }
    }

    /// v2 memory.events (one file); v1 memory.failcnt, plus memory.memsw.failcnt where swap
    /// is accounted: with a memory+swap limit (Slurm's ConstrainSwapSpace) the charge fails
    /// against memsw first and only its count moves.
    fn memory_events(&mut self, cgroup: &ContainerCgroup) -> Option<MemoryEvents> {
        let member = cgroup.controller_member("memory", "memory")?;
        let dir = &member.dir;
        let events = match member.version {
            Version::V2 => self
                .read(&dir.join("memory.events"), parse::parse_v2_memory_events)
                .map(|e| MemoryEvents {
                    high: e.high,
                    max: e.max,
                    oom: e.oom,
                })
                .unwrap_or_default(),
            Version::V1 => {
                let memory = self.read(&dir.join("memory.failcnt"), parse::parse_u64);
                let memsw = memory
                    .and_then(|_| self.read(&dir.join("memory.memsw.failcnt"), parse::parse_u64));
                MemoryEvents {
                    max: memory.map(|m| m.saturating_add(memsw.unwrap_or(0))),
                    ..MemoryEvents::default()
                }
            }
        };
        some_if(events)
    }

    /// The CPUs the container's CFS quota allows, the smallest along its cgroup path (a job's
    /// quota holds its containers too); `None` without a quota anywhere. v1: the cpu
    /// hierarchy's cpu.cfs_quota_us over cpu.cfs_period_us; v2: cpu.max, which exists only
    /// where the cpu controller is enabled (on an ancestor, when not on the container).
    pub fn cpu_quota(&mut self, cgroup: &ContainerCgroup) -> Option<f64> {
        let member = cgroup.v1_member("cpu").or_else(|| cgroup.v2_member())?;
        let limit = Limit::CpuQuota(member.version);
        let own = self.read_limit(&member.dir, limit).flatten();
        let above = match member.dir.parent() {
            Some(parent) if *member.dir != *member.mount_point => {
                self.ancestors_limit(parent, &member.mount_point, limit)
            }
            _ => None,
        };
        let micro = match (own, above) {
            (Some(own), Some(above)) => own.min(above),
            (own, above) => own.or(above)?,
        };
        Some(micro as f64 / 1e6)
    }

    /// v1 cpuacct: the total from cpuacct.usage (ns: the scheduler's own runtime); user and
    /// system from cpuacct.usage_all (ns, Linux 4.7+: one file instead of two, and the
    /// kernel walks the CPUs once), else cpuacct.usage_user/usage_sys (ns) or cpuacct.stat
    /// (USER_HZ ticks). The split is sampled at each timer tick on current kernels (a 0.1 s
    /// burst can show as 0.08 s), so it never stands for the total, which the probe also
    /// reads.
    fn sample_cpu_v1(&mut self, dir: &Path) -> Cpu {
        let mut cpu = Cpu::default();
        let usage = self.read(&dir.join("cpuacct.usage"), parse::parse_u64);
        cpu.usage_seconds = usage.map(nanoseconds_to_seconds);
        if let Some((user, system)) = self.read(
            &dir.join("cpuacct.usage_all"),
            parse::parse_v1_cpuacct_usage_all,
        ) {
            cpu.usage_seconds = cpu
                .usage_seconds
                .or(Some(nanoseconds_to_seconds(user.saturating_add(system))));
            cpu.user_seconds = Some(nanoseconds_to_seconds(user));
            cpu.system_seconds = Some(nanoseconds_to_seconds(system));
            return cpu;
        }
        let user = self.read(&dir.join("cpuacct.usage_user"), parse::parse_u64);
        let system = self.read(&dir.join("cpuacct.usage_sys"), parse::parse_u64);
        cpu.user_seconds = user.map(nanoseconds_to_seconds);
        cpu.system_seconds = system.map(nanoseconds_to_seconds);
        if user.is_some() && system.is_some() {
            return cpu;
        }
        let Some(ticks) = self.read(&dir.join("cpuacct.stat"), parse::parse_v1_cpuacct_stat) else {
            return cpu;
        };
        let ticks_per_second = procfs::ticks_per_second() as f64;
        let to_seconds = |ticks: u64| ticks as f64 / ticks_per_second;
        if cpu.user_seconds.is_none() {
            cpu.user_seconds = ticks.user_ticks.map(to_seconds);
        }
        if cpu.system_seconds.is_none() {
            cpu.system_seconds = ticks.system_ticks.map(to_seconds);
        }
        cpu
    }

    fn sample_memory(&mut self, cgroup: &ContainerCgroup) -> Option<Memory> {
        let Some(member) = cgroup.controller_member("memory", "memory") else {
            return some_if(self.sample_memory_from_processes(cgroup));
        };
        let files = member.version.memory_files();
        let dir = &member.dir;
        let usage = self.read(&dir.join(files.usage), parse::parse_u64);
        let stat = self
            .read(&dir.join("memory.stat"), files.parse_stat)
            .unwrap_or_default();
        let mut memory = Memory {
            usage_bytes: usage,
            working_set_bytes: working_set(usage, stat.inactive_file),
            rss_bytes: stat.rss,
            cache_bytes: stat.cache,
            ..Memory::default()
        };
        // The swap files exist only when the kernel accounts swap. v1's memory.stat lacks
        // `total_swap` on some kernels: memsw (memory + swap) minus memory then, the two read at
        // slightly different times, hence the saturating subtraction.
        memory.swap_bytes = match member.version {
            Version::V1 => stat.swap.or_else(|| {
                let memsw = self.read(&dir.join("memory.memsw.usage_in_bytes"), parse::parse_u64);
                Some(memsw?.saturating_sub(usage?))
            }),
            Version::V2 => self.read(&dir.join("memory.swap.current"), parse::parse_u64),
        };
        memory.max_usage_bytes = self.read(&dir.join(files.peak), parse::parse_u64);
        memory.limit_bytes = self.effective_limit(member, files.limit);
        some_if(memory)
    }

    /// Memory of the container's processes: usage and working set are the sum of their
    /// resident memory; rss is the sum of their anonymous resident memory (resident minus the
    /// file-backed and shmem pages statm calls shared), the same meaning as a cgroup's rss.
    /// Pages shared between processes count once per process. The kernel keeps no cache, swap
    /// or peak for a set of processes: those stay `None`. The limit is the ancestors'.
    fn sample_memory_from_processes(&mut self, cgroup: &ContainerCgroup) -> Memory {
        let Some(pids) = cgroup.read_procs() else {
            return Memory::default();
        };
        let page_size = procfs::page_size();
        let mut resident: u64 = 0;
        let mut anonymous: u64 = 0;
        for pid in pids {
            let path = PathBuf::from(format!("/proc/{pid}/statm"));
            // A process that exited since cgroup.procs was read simply counts no more.
            let Some(statm) = self.read(&path, parse::parse_statm) else {
                continue;
            };
            resident = resident.saturating_add(statm.resident_pages.saturating_mul(page_size));
            let anonymous_pages = statm.resident_pages.saturating_sub(statm.shared_pages);
            anonymous = anonymous.saturating_add(anonymous_pages.saturating_mul(page_size));
        }
        Memory {
            usage_bytes: Some(resident),
            working_set_bytes: Some(resident),
            rss_bytes: Some(anonymous),
            // The limits above still hold the processes (a job's memory.max).
            limit_bytes: self.limit_above(cgroup, "memory.max"),
            ..Memory::default()
        }
    }

    fn sample_pids(&mut self, cgroup: &ContainerCgroup) -> Option<Pids> {
        if let Some(member) = cgroup.controller_member("pids", "pids") {
            return some_if(Pids {
                current: self.read(&member.dir.join("pids.current"), parse::parse_u64),
                limit: self.effective_limit(member, "pids.max"),
            });
        }
        // No pids controller: count the tasks (threads) the cgroup lists, which is what
        // pids.current counts. Every cgroup directory has this file in both versions.
        let member = cgroup.primary_member()?;
        let file = match member.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.threads",
        };
        let tasks = self.read(&member.dir.join(file), parse::parse_ids);
        some_if(Pids {
            current: tasks.map(|tasks| tasks.len() as u64),
            limit: self.limit_above(cgroup, "pids.max"),
        })
    }

    /// For a container whose own v2 directory lacks a controller (v2 gives none below a cgroup
    /// that holds processes): the smallest `file` limit of its ancestors, which still applies to
    /// everything below them (a job's limit). `None` when unlimited, and on v1.
    fn limit_above(&mut self, cgroup: &ContainerCgroup, file: &'static str) -> Option<u64> {
        let member = cgroup.v2_member()?;
        if *member.dir == *member.mount_point {
            return None;
        }
        let parent = member.dir.parent()?;
        self.ancestors_limit(parent, &member.mount_point, Limit::File(file))
    }

    fn sample_io(&mut self, cgroup: &ContainerCgroup) -> Option<Io> {
        let bytes = match cgroup.controller_member("blkio", "io") {
            Some(member) if member.version == Version::V2 => {
                self.read(&member.dir.join("io.stat"), parse::parse_v2_io_stat)
            }
            Some(member) => self.read_v1_blkio(&member.dir),
            None => None,
        };
        bytes.map(|b| Io {
            read_bytes: b.read,
            write_bytes: b.write,
        })
    }

    /// v1 blkio bytes, from the first of these files that reads and parses. The plain
    /// blkio.io_service_bytes_recursive exists only with the CFQ scheduler (gone since Linux
    /// 5.0). Caveat seen on Linux 6.18: the throttle counters of a device stay 0 until a
    /// throttle rule has been set for that device in some cgroup (blk-throttle sets itself up
    /// for a disk on its first rule, and keeps counting afterwards).
    fn read_v1_blkio(&mut self, dir: &Path) -> Option<IoBytes> {
        const FILES: [&str; 3] = [
            "blkio.throttle.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes",
            "blkio.io_service_bytes_recursive",
        ];
        FILES
            .iter()
            .find_map(|file| self.read(&dir.join(file), parse::parse_v1_blkio))
    }

    /// The limit that really applies to a container: the smallest of its own and its
    /// ancestors' up to the hierarchy's mount point (a nested container lives under its job's
    /// limit). `None` when unlimited everywhere, or when the container's own file cannot be
    /// read.
    fn effective_limit(&mut self, member: &Member, file: &'static str) -> Option<u64> {
        let own = self.read_limit(&member.dir, Limit::File(file))?;
        let above = match member.dir.parent() {
            Some(parent) if *member.dir != *member.mount_point => {
                self.ancestors_limit(parent, &member.mount_point, Limit::File(file))
            }
            _ => None,
        };
        match (own, above) {
            (Some(own), Some(above)) => Some(own.min(above)),
            (own, above) => own.or(above),
        }
    }

    /// One directory's `limit`: `None` when it cannot be read, `Some(None)` when unlimited.
    fn read_limit(&mut self, dir: &Path, limit: Limit) -> Option<Option<u64>> {
        match limit {
            Limit::File(file) => self.read(&dir.join(file), parse::parse_limit),
            Limit::CpuQuota(Version::V2) => Some(
                self.read(&dir.join("cpu.max"), parse::parse_v2_cpu_max)?
                    .map(|(quota, period)| micro_cpus(quota, period)),
            ),
            Limit::CpuQuota(Version::V1) => {
                let Some(quota) =
                    self.read(&dir.join("cpu.cfs_quota_us"), parse::parse_v1_cfs_quota)?
                else {
                    return Some(None);
                };
                let period = self.read(&dir.join("cpu.cfs_period_us"), parse::parse_u64)?;
                Some(Some(micro_cpus(quota, period)))
            }
        }
    }

    /// The smallest `limit` of `dir` and its ancestors up to `mount_point`, reused for
    /// `ANCESTORS_TTL`; `None` when unlimited (or unreadable) everywhere.
    fn ancestors_limit(&mut self, dir: &Path, mount_point: &Path, limit: Limit) -> Option<u64> {
        let key = dir.join(limit.file());
        let now = Instant::now();
        if let Some((at, cached)) = self.ancestors.get(&key)
            && now.duration_since(*at) < ANCESTORS_TTL
        {
            return *cached;
        }
        let mut smallest: Option<u64> = None;
        let mut dir = dir;
        while dir.starts_with(mount_point) {
            // The root has no limit files (v2, v1 pids): nothing to add there.
            if let Some(Some(ancestor)) = self.read_limit(dir, limit) {
                smallest = Some(smallest.map_or(ancestor, |l| l.min(ancestor)));
            }
            if dir == mount_point {
                break;
            }
            let Some(parent) = dir.parent() else {
                break;
            };
            dir = parent;
        }
        // Entries of jobs that are gone would pile up: drop the stale ones now and then.
        if self.ancestors.len() >= 256 {
            self.ancestors
                .retain(|_, (at, _)| now.duration_since(*at) < ANCESTORS_TTL);
        }
        self.ancestors.insert(key, (now, smallest));
        smallest
    }
}

/// A probe's text, by its kind; a garbled one reads as no value (a full read then follows).
fn parse_probe(kind: probe::Kind, text: &str) -> Probe {
    match kind {
        probe::Kind::V1Usage => Probe {
            value: parse::parse_u64_bytes(text),
            cpu: None,
        },
        probe::Kind::V2CpuStat => {
            let cpu = parse::parse_v2_cpu_stat(text)
                .inspect_err(|e| tracing::debug!("cannot parse a cpu.stat probe: {e:#}"))
                .ok();
            Probe {
                value: cpu.as_ref().and_then(|c| c.usage_usec),
                cpu,
            }
        }
    }
}

fn nanoseconds_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn microseconds_to_seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

fn cpu_v2(cpu: &parse::V2CpuStat) -> Option<Cpu> {
    some_if(Cpu {
        usage_seconds: cpu.usage_usec.map(microseconds_to_seconds),
        user_seconds: cpu.user_usec.map(microseconds_to_seconds),
        system_seconds: cpu.system_usec.map(microseconds_to_seconds),
    })
}

/// Usage minus the inactive file cache, which the kernel reclaims first (the working set as
/// cAdvisor and the kubelet define it).
fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    Some(usage?.saturating_sub(inactive_file?))
}
