//! Pure parsers for the text files of cgroupfs and procfs that the cgroup module reads.
//!
//! Every function takes the file's text and returns an error (or `None`) on input it does not
//! understand; none of them panics, whatever the input. Callers add the file's path to the error.

use anyhow::{Context, Result, bail};

/// One mount of a cgroup filesystem, as listed in /proc/<pid>/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    /// `major:minor` of the filesystem: two mounts of the same hierarchy share it.
    pub device: String,
    /// The cgroup path that `mount_point` shows: "/" unless a sub-tree was bind-mounted
    /// (containers without a cgroup namespace see e.g. "/docker/<id>").
    pub root: String,
    pub mount_point: String,
    /// true for cgroup2, false for a v1 hierarchy.
    pub v2: bool,
    /// The super options of a v1 mount (controllers and flags such as `rw`, `xattr`,
    /// `name=systemd`); empty for cgroup2.
    pub options: Vec<String>,
}

/// Parses /proc/<pid>/mountinfo and keeps the cgroup and cgroup2 mounts.
///
/// A line is `id parent major:minor root mount-point mount-options [optional-fields...] - fstype
/// source super-options`; the number of optional fields varies, so the fields after the
/// separator are found by looking for the lone "-".
pub(crate) fn parse_mountinfo(text: &str) -> Result<Vec<CgroupMount>> {
    let mut mounts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mount = parse_mountinfo_line(line)
            .with_context(|| format!("mountinfo line {}: {line:?}", index + 1))?;
        if let Some(mount) = mount {
            mounts.push(mount);
        }
    }
    Ok(mounts)
}

/// One mountinfo line: `Some` for a cgroup mount, `None` for any other filesystem.
fn parse_mountinfo_line(line: &str) -> Result<Option<CgroupMount>> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let Some(separator) = fields.iter().position(|field| *field == "-") else {
        bail!("no \" - \" separator");
    };
    // Six fields precede the optional ones; three follow the separator.
    if separator < 6 || fields.len() < separator + 4 {
        bail!("too few fields");
    }
    let fstype = fields[separator + 1];
    let v2 = match fstype {
        "cgroup2" => true,
        "cgroup" => false,
        _ => return Ok(None),
    };
    let device = fields[2];
    if !device.contains(':') {
        bail!("bad device {device:?}");
    }
    let options = if v2 {
        Vec::new()
    } else {
        fields[separator + 3]
            .split(',')
            .map(str::to_string)
            .collect()
    };
    Ok(Some(CgroupMount {
        device: device.to_string(),
        root: unescape_mountinfo(fields[3])?,
        mount_point: unescape_mountinfo(fields[4])?,
        v2,
        options,
    }))
}

/// Undoes the octal escapes (`\040` for a space, `\011`, `\012`, `\134`) the kernel writes in
/// the path fields of mountinfo.
fn unescape_mountinfo(field: &str) -> Result<String> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = bytes
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .with_context(|| format!("truncated escape in {field:?}"))?;
            let value = u8::from_str_radix(digits, 8)
                .with_context(|| format!("bad escape \\{digits} in {field:?}"))?;
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("{field:?} is not UTF-8"))
}

/// One line of /proc/<pid>/cgroup: `hierarchy-id:controller-list:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcCgroup {
    pub hierarchy_id: u32,
    /// v1 controllers (and `name=...`) of the hierarchy; empty for the v2 line `0::/path`.
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses /proc/<pid>/cgroup.
pub(crate) fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let entry = parse_proc_cgroup_line(line)
            .with_context(|| format!("line {}: {line:?}", index + 1))?;
        entries.push(entry);
    }
    if entries.is_empty() {
        bail!("no cgroup listed");
    }
    Ok(entries)
}

fn parse_proc_cgroup_line(line: &str) -> Result<ProcCgroup> {
    // The path is last and may itself contain ':' so split at most twice.
    let mut parts = line.splitn(3, ':');
    let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("expected id:controllers:path");
    };
    let hierarchy_id = id.parse().context("bad hierarchy id")?;
    if !path.starts_with('/') {
        bail!("path {path:?} is not absolute");
    }
    let controllers = if controllers.is_empty() {
        Vec::new()
    } else {
        controllers.split(',').map(str::to_string).collect()
    };
    Ok(ProcCgroup {
        hierarchy_id,
        controllers,
        path: path.to_string(),
    })
}

/// Parses a "flat keyed" file: one `key value` pair per line, as in v1 memory.stat,
/// cpuacct.stat and v2 cpu.stat, memory.stat. Any line that is not a key and an unsigned
/// number is an error: it is how a truncated or foreign file shows.
pub(crate) fn parse_flat_keyed(text: &str) -> Result<FlatKeyed<'_>> {
    // A few dozen pairs, of which the caller wants a handful: a Vec of borrowed keys searched
    // linearly costs less than hashing and copying every key (this runs for every container at
    // every pass).
    let mut values = Vec::with_capacity(64);
    for (index, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            bail!("line {}: expected \"key value\": {line:?}", index + 1);
        };
        let value = value
            .parse()
            .with_context(|| format!("line {}: bad number in {line:?}", index + 1))?;
        values.push((key, value));
    }
    if values.is_empty() {
        bail!("empty");
    }
    Ok(FlatKeyed(values))
}

/// The pairs of a flat keyed file; a key given twice has its last value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FlatKeyed<'a>(Vec<(&'a str, u64)>);

impl FlatKeyed<'_> {
    /// Every pair, in file order (what the fuzz harness checks).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn pairs(&self) -> &[(&str, u64)] {
        &self.0
    }

    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        self.get_prefixed("", key)
    }

    /// The value of the key `<prefix><key>`.
    pub(crate) fn get_prefixed(&self, prefix: &str, key: &str) -> Option<u64> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.strip_prefix(prefix) == Some(key))
            .map(|(_, v)| *v)
    }
}

/// The counters of memory.stat the daemon exports, in bytes, whichever the version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemoryStat {
    /// Anonymous memory: v1 `total_rss` (anonymous and swap cache; the kernel already counts
    /// transparent huge pages in it, `rss_huge` being a subset), v2 `anon`.
    pub rss: Option<u64>,
    /// Page cache: v1 `total_cache`, v2 `file`.
    pub cache: Option<u64>,
    pub inactive_file: Option<u64>,
    /// v1 `total_swap`, which the kernel writes only when it accounts swap (memsw); v2 keeps
    /// swap in its own file (always `None` here).
    pub swap: Option<u64>,
}

/// Parses v1 memory.stat. The hierarchical `total_*` counters include the container's
/// descendants; a file without them (very old kernels) falls back to the local ones.
pub(crate) fn parse_v1_memory_stat(text: &str) -> Result<MemoryStat> {
    let values = parse_flat_keyed(text)?;
    let pick = |key: &str| {
        values
            .get_prefixed("total_", key)
            .or_else(|| values.get(key))
    };
    Ok(MemoryStat {
        rss: pick("rss"),
        cache: pick("cache"),
        inactive_file: pick("inactive_file"),
        swap: pick("swap"),
    })
}

/// User and system time of v1 cpuacct.stat, in USER_HZ ticks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct V1CpuacctStat {
    pub user_ticks: Option<u64>,
    pub system_ticks: Option<u64>,
}

pub(crate) fn parse_v1_cpuacct_stat(text: &str) -> Result<V1CpuacctStat> {
    let values = parse_flat_keyed(text)?;
    Ok(V1CpuacctStat {
        user_ticks: values.get("user"),
        system_ticks: values.get("system"),
    })
}

/// User and system time of v1 cpuacct.usage_all (Linux 4.7+), in nanoseconds, summed over the
/// CPUs: a `cpu user system` header, then one `<cpu> <user> <system>` line per CPU. Their sum is
/// cpuacct.usage, so this one file stands for cpuacct.usage, usage_user and usage_sys.
pub(crate) fn parse_v1_cpuacct_usage_all(text: &str) -> Result<(u64, u64)> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header.split_whitespace().collect::<Vec<_>>() != ["cpu", "user", "system"] {
        bail!("unexpected header {header:?}");
    }
    let (mut user, mut system, mut cpus) = (0u64, 0u64, 0usize);
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("garbled line {line:?}"))?;
        let [_, u, s] = fields[..] else {
            bail!("expected three numbers, got {line:?}");
        };
        user = user.saturating_add(u);
        system = system.saturating_add(s);
        cpus += 1;
    }
    if cpus == 0 {
        bail!("no CPU lines");
    }
    Ok((user, system))
}

/// CPU times of v2 cpu.stat, in microseconds, and its CFS bandwidth counters, which the
/// kernel writes only where the cpu controller is enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct V2CpuStat {
    pub usage_usec: Option<u64>,
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

pub(crate) fn parse_v2_cpu_stat(text: &str) -> Result<V2CpuStat> {
    let values = parse_flat_keyed(text)?;
    Ok(V2CpuStat {
        usage_usec: values.get("usage_usec"),
        user_usec: values.get("user_usec"),
        system_usec: values.get("system_usec"),
        nr_periods: values.get("nr_periods"),
        nr_throttled: values.get("nr_throttled"),
        throttled_usec: values.get("throttled_usec"),
    })
}

/// The CFS bandwidth counters of v1 cpu.stat (the cpu hierarchy): enforcement periods that
/// elapsed while the cgroup had runnable tasks and a quota, periods in which it was throttled,
/// and the time it spent throttled (nanoseconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct V1CpuStat {
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_time_ns: Option<u64>,
}

pub(crate) fn parse_v1_cpu_stat(text: &str) -> Result<V1CpuStat> {
    let values = parse_flat_keyed(text)?;
    Ok(V1CpuStat {
        nr_periods: values.get("nr_periods"),
        nr_throttled: values.get("nr_throttled"),
        throttled_time_ns: values.get("throttled_time"),
    })
}

/// v2 cpu.max, `$MAX $PERIOD` in microseconds: the quota and its period, `None` for "max"
/// (no quota).
pub(crate) fn parse_v2_cpu_max(text: &str) -> Result<Option<(u64, u64)>> {
    let mut fields = text.split_whitespace();
    let (Some(quota), Some(period), None) = (fields.next(), fields.next(), fields.next()) else {
        bail!("expected \"$MAX $PERIOD\", got {text:?}");
    };
    let period: u64 = period
        .parse()
        .with_context(|| format!("bad period {period:?}"))?;
    if period == 0 {
        bail!("a period of 0");
    }
    if quota == "max" {
        return Ok(None);
    }
    let quota = quota
        .parse()
        .with_context(|| format!("bad quota {quota:?}"))?;
    Ok(Some((quota, period)))
}

/// v1 cpu.cfs_quota_us: the quota in microseconds per period, `None` for -1 (no quota).
pub(crate) fn parse_v1_cfs_quota(text: &str) -> Result<Option<u64>> {
    let value = text.trim();
    if value == "-1" {
        return Ok(None);
    }
    parse_u64(value).map(Some)
}

/// The totals of a PSI file (`cpu.pressure`, `memory.pressure`, `io.pressure`), in
/// microseconds. Each line is `some|full avg10=.. avg60=.. avg300=.. total=N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PressureTotals {
    /// `some`: time in which at least one of the cgroup's tasks waited for the resource.
    pub some_usec: u64,
    /// `full`: time in which all its non-idle tasks waited at once. `None` where the file has
    /// no such line (cpu.pressure before Linux 5.13).
    pub full_usec: Option<u64>,
}

pub(crate) fn parse_pressure(text: &str) -> Result<PressureTotals> {
    let (mut some, mut full) = (None, None);
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(kind) = fields.next() else {
            continue;
        };
        let mut total = None;
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                bail!("line {}: expected key=value, got {field:?}", index + 1);
            };
            // The averages are percentages with decimals; only the total is kept.
            if key == "total" {
                let value: u64 = value
                    .parse()
                    .with_context(|| format!("line {}: bad total {value:?}", index + 1))?;
                total = Some(value);
            }
        }
        let Some(total) = total else {
            bail!("line {}: no total in {line:?}", index + 1);
        };
        let slot = match kind {
            "some" => &mut some,
            "full" => &mut full,
            // A kind a later kernel may add: not ours to read.
            _ => continue,
        };
        if slot.replace(total).is_some() {
            bail!("line {}: a second {kind:?} line", index + 1);
        }
    }
    let Some(some_usec) = some else {
        bail!("no \"some\" line");
    };
    Ok(PressureTotals {
        some_usec,
        full_usec: full,
    })
}

/// The events of v2 memory.events that the daemon exports: times the usage went over
/// memory.high (`high`), was about to go over memory.max (`max`), and the OOM killer was
/// about to be invoked (`oom`). Hierarchical: they include the cgroup's descendants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct V2MemoryEvents {
    pub high: Option<u64>,
    pub max: Option<u64>,
    pub oom: Option<u64>,
}

pub(crate) fn parse_v2_memory_events(text: &str) -> Result<V2MemoryEvents> {
    let values = parse_flat_keyed(text)?;
    Ok(V2MemoryEvents {
        high: values.get("high"),
        max: values.get("max"),
        oom: values.get("oom"),
    })
}

pub(crate) fn parse_v2_memory_stat(text: &str) -> Result<MemoryStat> {
    let values = parse_flat_keyed(text)?;
    Ok(MemoryStat {
        rss: values.get("anon"),
        cache: values.get("file"),
        inactive_file: values.get("inactive_file"),
        swap: None,
    })
}

/// Bytes read from and written to block devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IoBytes {
    pub read: u64,
    pub write: u64,
}

/// Parses a v1 blkio service-bytes file (`blkio.throttle.io_service_bytes[_recursive]`,
/// `blkio.io_service_bytes_recursive`): lines `major:minor Op bytes` for Read, Write, Sync,
/// Async, Discard and Total, and a last line `Total bytes`. Sums the Read and Write lines over
/// the devices. A file with only `Total 0` (no I/O yet) gives zeros.
pub(crate) fn parse_v1_blkio(text: &str) -> Result<IoBytes> {
    let mut bytes = IoBytes::default();
    let mut seen_total = false;
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => continue,
            ["Total", value] => {
                value
                    .parse::<u64>()
                    .with_context(|| format!("line {}: bad total in {line:?}", index + 1))?;
                seen_total = true;
            }
            [device, op, value] if device.contains(':') => {
                let value: u64 = value
                    .parse()
                    .with_context(|| format!("line {}: bad number in {line:?}", index + 1))?;
                match *op {
                    "Read" => bytes.read = bytes.read.saturating_add(value),
                    "Write" => bytes.write = bytes.write.saturating_add(value),
                    _ => {}
                }
            }
            _ => bail!("line {}: unexpected {line:?}", index + 1),
        }
    }
    // The kernel always ends the file with "Total N"; without it the read was cut short.
    if !seen_total {
        bail!("no \"Total\" line");
    }
    Ok(bytes)
}

/// Parses v2 io.stat: one line per device, `major:minor key=value ...`, summing `rbytes` and
/// `wbytes`. An empty file (no I/O yet) gives zeros.
pub(crate) fn parse_v2_io_stat(text: &str) -> Result<IoBytes> {
    let mut bytes = IoBytes::default();
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(device) = fields.next() else {
            continue;
        };
        if !device.contains(':') {
            bail!("line {}: bad device in {line:?}", index + 1);
        }
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                bail!("line {}: expected key=value, got {field:?}", index + 1);
            };
            // Other keys (rios, dbytes, and cost.* with io.cost) are not all integers.
            let target = match key {
                "rbytes" => &mut bytes.read,
                "wbytes" => &mut bytes.write,
                _ => continue,
            };
            let value: u64 = value
                .parse()
                .with_context(|| format!("line {}: bad number in {field:?}", index + 1))?;
            *target = target.saturating_add(value);
        }
    }
    Ok(bytes)
}

/// Parses a file that holds one unsigned number (memory.current, pids.current, cpuacct.usage).
pub(crate) fn parse_u64(text: &str) -> Result<u64> {
    let value = text.trim();
    value
        .parse()
        .with_context(|| format!("expected a number, got {value:?}"))
}

/// A number and a newline, as v1 cpuacct.usage holds: `parse_u64` without the error's text (an
/// idle container's probe is parsed at every pass). `None` when it is anything else.
pub(crate) fn parse_u64_bytes(text: &str) -> Option<u64> {
    text.trim_ascii().parse().ok()
}

/// v1 writes "no limit" as the largest page-aligned i64 (9223372036854771712 with 4 KiB pages,
/// a little less with larger pages). Anything this large is no real limit.
const UNLIMITED_FROM: u64 = 1 << 62;

/// Parses a limit file: v2 memory.max and pids.max, v1 pids.max ("max" or a number), and v1
/// memory.limit_in_bytes (a number, huge when unlimited). `Ok(None)` means unlimited.
pub(crate) fn parse_limit(text: &str) -> Result<Option<u64>> {
    let value = text.trim();
    if value == "max" {
        return Ok(None);
    }
    let limit = parse_u64(value)?;
    Ok((limit < UNLIMITED_FROM).then_some(limit))
}

/// Resident and shared pages of /proc/<pid>/statm
/// (`size resident shared text lib data dt`, in pages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Statm {
    pub resident_pages: u64,
    /// Resident file-backed and shmem pages (RssFile + RssShmem).
    pub shared_pages: u64,
}

pub(crate) fn parse_statm(text: &str) -> Result<Statm> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 7 {
        bail!("expected 7 fields, got {}", fields.len());
    }
    let number = |index: usize| -> Result<u64> {
        fields[index]
            .parse()
            .with_context(|| format!("bad number {:?}", fields[index]))
    };
    // Check all seven so that a garbled line is refused, not half-read.
    for index in 0..7 {
        number(index)?;
    }
    Ok(Statm {
        resident_pages: number(1)?,
        shared_pages: number(2)?,
    })
}

/// Parses cgroup.procs, cgroup.threads or tasks: one id per line.
pub(crate) fn parse_ids(text: &str) -> Result<Vec<i32>> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.trim()
                .parse()
                .with_context(|| format!("bad id {line:?}"))
        })
        .collect()
}

/// Parses cgroup.controllers or cgroup.subtree_control: controller names separated by spaces.
pub(crate) fn parse_controller_list(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_HYBRID: &str = include_str!("fixtures/mountinfo_hybrid.txt");
    const MOUNTINFO_V2: &str = include_str!("fixtures/mountinfo_v2.txt");
    const MOUNTINFO_V1: &str = include_str!("fixtures/mountinfo_v1.txt");
    const PROC_CGROUP_HYBRID: &str = include_str!("fixtures/proc_cgroup_hybrid.txt");
    const PROC_CGROUP_V1: &str = include_str!("fixtures/proc_cgroup_v1.txt");
    const PROC_CGROUP_V2: &str = include_str!("fixtures/proc_cgroup_v2.txt");
    const V1_MEMORY_STAT: &str = include_str!("fixtures/v1_memory.stat");
    const V1_CPUACCT_STAT: &str = include_str!("fixtures/v1_cpuacct.stat");
    const V1_BLKIO: &str = include_str!("fixtures/v1_blkio.throttle.io_service_bytes_recursive");
    const V1_BLKIO_EMPTY: &str = include_str!("fixtures/v1_blkio_empty.txt");
    const V1_LIMIT_UNLIMITED: &str = include_str!("fixtures/v1_memory.limit_in_bytes_unlimited");
    const V2_CPU_STAT: &str = include_str!("fixtures/v2_cpu.stat");
    const V2_CPU_STAT_NO_CONTROLLER: &str = include_str!("fixtures/v2_cpu.stat_no_controller");
    const V2_MEMORY_STAT: &str = include_str!("fixtures/v2_memory.stat");
    const V2_IO_STAT: &str = include_str!("fixtures/v2_io.stat");
    const V2_MEMORY_MAX: &str = include_str!("fixtures/v2_memory.max");
    const V2_MEMORY_MAX_LIMITED: &str = include_str!("fixtures/v2_memory.max_limited");
    const V2_PIDS_MAX: &str = include_str!("fixtures/v2_pids.max");
    const V2_PIDS_MAX_LIMITED: &str = include_str!("fixtures/v2_pids.max_limited");
    const STATM: &str = include_str!("fixtures/proc_statm.txt");
    const V2_CPU_PRESSURE: &str = include_str!("fixtures/v2_cpu.pressure");
    const V2_CPU_PRESSURE_5_10: &str = include_str!("fixtures/v2_cpu.pressure_5.10");
    const V2_MEMORY_PRESSURE: &str = include_str!("fixtures/v2_memory.pressure");
    const V2_IO_PRESSURE: &str = include_str!("fixtures/v2_io.pressure");
    const V1_CPU_STAT_THROTTLED: &str = include_str!("fixtures/v1_cpu.stat_throttled");
    const V2_MEMORY_EVENTS: &str = include_str!("fixtures/v2_memory.events");
    const V2_CPU_MAX: &str = include_str!("fixtures/v2_cpu.max");
    const V2_CPU_MAX_LIMITED: &str = include_str!("fixtures/v2_cpu.max_limited");

    /// Every prefix of a fixture, cut at each character: a parser may refuse it but must not
    /// panic.
    fn every_prefix(text: &str) -> impl Iterator<Item = &str> {
        (0..text.len())
            .filter(|end| text.is_char_boundary(*end))
            .map(|end| &text[..end])
    }

    const GARBAGE: &[&str] = &[
        "",
        "\n",
        "garbage",
        "\u{0}\u{1}\u{2}",
        "key",
        "key value",
        "1 2 3 4 5 6 7 8 9",
        "- - - - - - - -",
        ":::",
        "max max",
        "-1",
        "18446744073709551616",
        "é\\0",
        "8:0 rbytes",
        "8:0 Read",
    ];

    #[test]
    fn v1_cpuacct_usage_all() {
        let text = "cpu user system\n0 100 20\n1 300 40\n";
        assert_eq!(parse_v1_cpuacct_usage_all(text).unwrap(), (400, 60));
        assert!(parse_v1_cpuacct_usage_all("cpu user system\n").is_err());
        assert!(parse_v1_cpuacct_usage_all("cpu user\n0 1\n").is_err());
        assert!(parse_v1_cpuacct_usage_all("cpu user system\n0 1 x\n").is_err());
        assert!(parse_v1_cpuacct_usage_all("").is_err());
    }

    #[test]
    fn mountinfo_hybrid() {
        let mounts = parse_mountinfo(MOUNTINFO_HYBRID).unwrap();
        let points: Vec<&str> = mounts.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(
            points,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuacct",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/devices",
                "/sys/fs/cgroup/freezer",
                "/sys/fs/cgroup/blkio",
                "/sys/fs/cgroup/pids",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
            ]
        );
        let memory = &mounts[3];
        assert_eq!(memory.device, "0:32");
        assert_eq!(memory.root, "/");
        assert!(!memory.v2);
        assert_eq!(memory.options, ["rw", "memory"]);
        let unified = mounts.last().unwrap();
        assert!(unified.v2);
        assert!(unified.options.is_empty());
    }

    #[test]
    fn mountinfo_v2() {
        let mounts = parse_mountinfo(MOUNTINFO_V2).unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, "/sys/fs/cgroup");
        assert!(mounts[0].v2);
    }

    #[test]
    fn mountinfo_v1_comounted() {
        let mounts = parse_mountinfo(MOUNTINFO_V1).unwrap();
        // Every v1 hierarchy is listed, used by the daemon or not.
        assert_eq!(mounts.len(), 11);
        let cpu = mounts
            .iter()
            .find(|m| m.mount_point == "/sys/fs/cgroup/cpu,cpuacct")
            .unwrap();
        assert_eq!(cpu.options, ["rw", "seclabel", "cpu", "cpuacct"]);
        assert!(mounts.iter().all(|m| !m.v2));
    }

    #[test]
    fn mountinfo_escapes_and_bind_root() {
        let text =
            "40 31 0:38 /docker/abc /my\\040cgroups rw shared:9 master:2 - cgroup2 cgroup2 rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        assert_eq!(mounts[0].mount_point, "/my cgroups");
        assert_eq!(mounts[0].root, "/docker/abc");
    }

    #[test]
    fn mountinfo_bad_input() {
        assert!(parse_mountinfo("40 31 0:38 / /x rw cgroup2 cgroup2 rw").is_err());
        assert!(parse_mountinfo("40 31 0:38 / - cgroup2 cgroup2 rw").is_err());
        assert!(parse_mountinfo("1 2 nodevice / /x rw - cgroup2 cgroup2 rw").is_err());
        assert!(parse_mountinfo("1 2 0:1 / /x\\04 rw - cgroup cgroup rw,memory").is_err());
        assert!(parse_mountinfo("1 2 0:1 / /x\\999 rw - cgroup cgroup rw,memory").is_err());
        assert_eq!(parse_mountinfo("").unwrap(), []);
        for text in GARBAGE {
            let _ = parse_mountinfo(text);
        }
        for fixture in [MOUNTINFO_HYBRID, MOUNTINFO_V1, MOUNTINFO_V2] {
            for prefix in every_prefix(fixture) {
                let _ = parse_mountinfo(prefix);
            }
        }
    }

    #[test]
    fn proc_cgroup_fixtures() {
        let hybrid = parse_proc_cgroup(PROC_CGROUP_HYBRID).unwrap();
        assert_eq!(hybrid.len(), 10);
        assert_eq!(
            hybrid[5],
            ProcCgroup {
                hierarchy_id: 4,
                controllers: vec!["memory".into()],
                path: "/process_api/0c30c5eec2e8a3d1fe60261fe2e49728".into(),
            }
        );
        assert_eq!(
            hybrid[9],
            ProcCgroup {
                hierarchy_id: 0,
                controllers: vec![],
                path: "/".into(),
            }
        );
        let v1 = parse_proc_cgroup(PROC_CGROUP_V1).unwrap();
        assert_eq!(v1[8].controllers, ["cpu", "cpuacct"]);
        assert_eq!(v1[8].path, "/user.slice");
        assert_eq!(v1[10].controllers, ["name=systemd"]);
        let v2 = parse_proc_cgroup(PROC_CGROUP_V2).unwrap();
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0].path, "/user.slice/user-1000.slice/session-3.scope");
    }

    #[test]
    fn proc_cgroup_path_with_colon() {
        let entries = parse_proc_cgroup("0::/a:b\n").unwrap();
        assert_eq!(entries[0].path, "/a:b");
    }

    #[test]
    fn proc_cgroup_bad_input() {
        assert!(parse_proc_cgroup("").is_err());
        assert!(parse_proc_cgroup("x::/").is_err());
        assert!(parse_proc_cgroup("0:memory").is_err());
        assert!(parse_proc_cgroup("0::relative").is_err());
        for text in GARBAGE {
            let _ = parse_proc_cgroup(text);
        }
        for prefix in every_prefix(PROC_CGROUP_HYBRID) {
            let _ = parse_proc_cgroup(prefix);
        }
    }

    #[test]
    fn v1_memory_stat_fixture() {
        let stat = parse_v1_memory_stat(V1_MEMORY_STAT).unwrap();
        assert_eq!(
            stat,
            MemoryStat {
                rss: Some(59736064),
                cache: Some(84774912),
                inactive_file: Some(80764928),
                swap: Some(0),
            }
        );
    }

    #[test]
    fn v1_memory_stat_local_fallback_and_no_swap_accounting() {
        let stat = parse_v1_memory_stat("cache 10\nrss 20\ninactive_file 5\n").unwrap();
        assert_eq!(
            stat,
            MemoryStat {
                rss: Some(20),
                cache: Some(10),
                inactive_file: Some(5),
                swap: None,
            }
        );
    }

    #[test]
    fn flat_keyed_bad_input() {
        assert!(parse_flat_keyed("").is_err());
        assert!(parse_flat_keyed("anon").is_err());
        assert!(parse_flat_keyed("anon x").is_err());
        assert!(parse_flat_keyed("anon -1").is_err());
        assert!(parse_flat_keyed("anon 1 2").is_err());
        for text in GARBAGE {
            let _ = parse_v1_memory_stat(text);
            let _ = parse_v1_cpuacct_stat(text);
            let _ = parse_v2_cpu_stat(text);
            let _ = parse_v2_memory_stat(text);
        }
        for prefix in every_prefix(V1_MEMORY_STAT) {
            let _ = parse_v1_memory_stat(prefix);
        }
        for prefix in every_prefix(V2_MEMORY_STAT) {
            let _ = parse_v2_memory_stat(prefix);
        }
        for prefix in every_prefix(V2_CPU_STAT) {
            let _ = parse_v2_cpu_stat(prefix);
        }
        // A line cut in the middle of a key leaves no value: refused.
        assert!(parse_v2_memory_stat("anon 1\nfil").is_err());
    }

    #[test]
    fn v1_cpuacct_stat_fixture() {
        assert_eq!(
            parse_v1_cpuacct_stat(V1_CPUACCT_STAT).unwrap(),
            V1CpuacctStat {
                user_ticks: Some(8),
                system_ticks: Some(86),
            }
        );
        assert!(parse_v1_cpuacct_stat("user\nsystem 1\n").is_err());
        for prefix in every_prefix(V1_CPUACCT_STAT) {
            let _ = parse_v1_cpuacct_stat(prefix);
        }
    }

    #[test]
    fn v2_cpu_stat_fixtures() {
        assert_eq!(
            parse_v2_cpu_stat(V2_CPU_STAT).unwrap(),
            V2CpuStat {
                usage_usec: Some(2934589123),
                user_usec: Some(2511034000),
                system_usec: Some(423555123),
                nr_periods: Some(1543),
                nr_throttled: Some(12),
                throttled_usec: Some(981234),
            }
        );
        // Without the cpu controller the kernel still writes the three times, and no
        // bandwidth counters.
        assert_eq!(
            parse_v2_cpu_stat(V2_CPU_STAT_NO_CONTROLLER).unwrap(),
            V2CpuStat {
                usage_usec: Some(1017843),
                user_usec: Some(99226),
                system_usec: Some(918617),
                ..Default::default()
            }
        );
    }

    #[test]
    fn v1_cpu_stat_fixture() {
        assert_eq!(
            parse_v1_cpu_stat(V1_CPU_STAT_THROTTLED).unwrap(),
            V1CpuStat {
                nr_periods: Some(25),
                nr_throttled: Some(25),
                throttled_time_ns: Some(3020591382),
            }
        );
        // Kernels before 5.14 have no burst lines; the three counters are all there is.
        assert_eq!(
            parse_v1_cpu_stat("nr_periods 0\nnr_throttled 0\nthrottled_time 0\n").unwrap(),
            V1CpuStat {
                nr_periods: Some(0),
                nr_throttled: Some(0),
                throttled_time_ns: Some(0),
            }
        );
        assert!(parse_v1_cpu_stat("nr_periods 1\nnr_throttled").is_err());
        for text in GARBAGE {
            let _ = parse_v1_cpu_stat(text);
        }
        for prefix in every_prefix(V1_CPU_STAT_THROTTLED) {
            let _ = parse_v1_cpu_stat(prefix);
        }
    }

    #[test]
    fn cpu_quotas() {
        assert_eq!(parse_v2_cpu_max(V2_CPU_MAX).unwrap(), None);
        assert_eq!(
            parse_v2_cpu_max(V2_CPU_MAX_LIMITED).unwrap(),
            Some((50000, 100000))
        );
        for bad in [
            "",
            "max",
            "50000",
            "max 0",
            "x 100000",
            "1 2 3",
            "-1 100000",
        ] {
            assert!(parse_v2_cpu_max(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_v1_cfs_quota("-1\n").unwrap(), None);
        assert_eq!(parse_v1_cfs_quota("20000\n").unwrap(), Some(20000));
        for bad in ["", "-2", "max", "1.5"] {
            assert!(parse_v1_cfs_quota(bad).is_err(), "{bad:?}");
        }
        for text in GARBAGE {
            let _ = parse_v2_cpu_max(text);
            let _ = parse_v1_cfs_quota(text);
        }
    }

    #[test]
    fn pressure_fixtures() {
        assert_eq!(
            parse_pressure(V2_CPU_PRESSURE).unwrap(),
            PressureTotals {
                some_usec: 2263303,
                full_usec: Some(2083218),
            }
        );
        assert_eq!(
            parse_pressure(V2_MEMORY_PRESSURE).unwrap(),
            PressureTotals {
                some_usec: 18085,
                full_usec: Some(7957),
            }
        );
        assert_eq!(
            parse_pressure(V2_IO_PRESSURE).unwrap(),
            PressureTotals {
                some_usec: 870,
                full_usec: Some(701),
            }
        );
        // cpu.pressure before 5.13: "some" only.
        assert_eq!(
            parse_pressure(V2_CPU_PRESSURE_5_10).unwrap(),
            PressureTotals {
                some_usec: 3845216,
                full_usec: None,
            }
        );
        // A kind a later kernel may add is skipped.
        let later = format!("{V2_IO_PRESSURE}stall avg10=0.00 total=5\n");
        assert_eq!(parse_pressure(&later).unwrap().some_usec, 870);
    }

    #[test]
    fn pressure_bad_input() {
        assert!(parse_pressure("").is_err());
        assert!(
            parse_pressure("full avg10=0.00 total=1\n").is_err(),
            "no some"
        );
        assert!(parse_pressure("some avg10=0.00\n").is_err(), "no total");
        assert!(parse_pressure("some total=x\n").is_err());
        assert!(parse_pressure("some total=-1\n").is_err());
        assert!(parse_pressure("some total\n").is_err());
        assert!(parse_pressure("some total=1\nsome total=2\n").is_err());
        for text in GARBAGE {
            let _ = parse_pressure(text);
        }
        for fixture in [V2_CPU_PRESSURE, V2_CPU_PRESSURE_5_10, V2_IO_PRESSURE] {
            for prefix in every_prefix(fixture) {
                let _ = parse_pressure(prefix);
            }
        }
    }

    #[test]
    fn v2_memory_events_fixture() {
        assert_eq!(
            parse_v2_memory_events(V2_MEMORY_EVENTS).unwrap(),
            V2MemoryEvents {
                high: Some(12),
                max: Some(37),
                oom: Some(2),
            }
        );
        for text in GARBAGE {
            let _ = parse_v2_memory_events(text);
        }
        for prefix in every_prefix(V2_MEMORY_EVENTS) {
            let _ = parse_v2_memory_events(prefix);
        }
    }

    #[test]
    fn v2_memory_stat_fixture() {
        assert_eq!(
            parse_v2_memory_stat(V2_MEMORY_STAT).unwrap(),
            MemoryStat {
                rss: Some(1073741824),
                cache: Some(536870912),
                inactive_file: Some(402653184),
                swap: None,
            }
        );
    }

    #[test]
    fn v1_blkio_fixtures() {
        assert_eq!(
            parse_v1_blkio(V1_BLKIO).unwrap(),
            IoBytes {
                read: 67108864,
                write: 16777216,
            }
        );
        assert_eq!(parse_v1_blkio(V1_BLKIO_EMPTY).unwrap(), IoBytes::default());
        let two_devices = "8:0 Read 10\n8:0 Write 1\n8:0 Total 11\n8:16 Read 5\n8:16 Write 2\n8:16 Total 7\nTotal 18\n";
        assert_eq!(
            parse_v1_blkio(two_devices).unwrap(),
            IoBytes { read: 15, write: 3 }
        );
    }

    #[test]
    fn v1_blkio_bad_input() {
        assert!(parse_v1_blkio("").is_err());
        assert!(parse_v1_blkio("254:0 Read 10\n").is_err());
        assert!(parse_v1_blkio("254:0 Read x\nTotal 0\n").is_err());
        assert!(parse_v1_blkio("Read 10\nTotal 0\n").is_err());
        for text in GARBAGE {
            let _ = parse_v1_blkio(text);
        }
        for prefix in every_prefix(V1_BLKIO) {
            let _ = parse_v1_blkio(prefix);
        }
    }

    #[test]
    fn v2_io_stat_fixture() {
        assert_eq!(
            parse_v2_io_stat(V2_IO_STAT).unwrap(),
            IoBytes {
                read: 1459200 + 90430464,
                write: 314773504 + 299008000,
            }
        );
        assert_eq!(parse_v2_io_stat("").unwrap(), IoBytes::default());
        // io.cost adds non-integer keys; they are skipped.
        let with_cost =
            "8:0 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0 cost.vrate=100.00 cost.usage=5\n";
        assert_eq!(
            parse_v2_io_stat(with_cost).unwrap(),
            IoBytes { read: 1, write: 2 }
        );
    }

    #[test]
    fn v2_io_stat_bad_input() {
        assert!(parse_v2_io_stat("8:0 rbytes").is_err());
        assert!(parse_v2_io_stat("8:0 rbytes=x").is_err());
        assert!(parse_v2_io_stat("rbytes=1").is_err());
        for text in GARBAGE {
            let _ = parse_v2_io_stat(text);
        }
        for prefix in every_prefix(V2_IO_STAT) {
            let _ = parse_v2_io_stat(prefix);
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit(V2_MEMORY_MAX).unwrap(), None);
        assert_eq!(parse_limit(V2_PIDS_MAX).unwrap(), None);
        assert_eq!(parse_limit(V1_LIMIT_UNLIMITED).unwrap(), None);
        // With 64 KiB pages the unlimited value is rounded to a lower multiple.
        assert_eq!(parse_limit("9223372036854710272\n").unwrap(), None);
        assert_eq!(
            parse_limit(V2_MEMORY_MAX_LIMITED).unwrap(),
            Some(1073741824)
        );
        assert_eq!(parse_limit(V2_PIDS_MAX_LIMITED).unwrap(), Some(4194304));
        assert_eq!(parse_limit("0\n").unwrap(), Some(0));
        assert!(parse_limit("").is_err());
        assert!(parse_limit("maximum").is_err());
        assert!(parse_limit("-1").is_err());
        for text in GARBAGE {
            let _ = parse_limit(text);
        }
    }

    #[test]
    fn single_numbers() {
        assert_eq!(parse_u64("962461725\n").unwrap(), 962461725);
        assert!(parse_u64("").is_err());
        assert!(parse_u64("12 13").is_err());
        for text in GARBAGE {
            let _ = parse_u64(text);
        }
    }

    #[test]
    fn statm_fixture() {
        assert_eq!(
            parse_statm(STATM).unwrap(),
            Statm {
                resident_pages: 444,
                shared_pages: 415,
            }
        );
        assert!(parse_statm("765 444 415").is_err());
        assert!(parse_statm("765 444 415 5 0 x 0").is_err());
        for text in GARBAGE {
            let _ = parse_statm(text);
        }
        for prefix in every_prefix(STATM) {
            let _ = parse_statm(prefix);
        }
    }

    #[test]
    fn ids() {
        assert_eq!(parse_ids("1\n42\n").unwrap(), [1, 42]);
        assert!(parse_ids("").unwrap().is_empty());
        assert!(parse_ids("1\nx\n").is_err());
        for text in GARBAGE {
            let _ = parse_ids(text);
        }
    }

    #[test]
    fn controller_lists() {
        assert_eq!(
            parse_controller_list("cpuset cpu io memory pids\n"),
            ["cpuset", "cpu", "io", "memory", "pids"]
        );
        assert!(parse_controller_list("\n").is_empty());
    }
}
