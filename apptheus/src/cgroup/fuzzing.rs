//! Fuzz harnesses of the cgroup module's parsers (see `crate::fuzzing`). Here because the
//! parsers, and the path mapping some invariants check, are private to the module.
// Harnesses: a panic is a finding, and their unwraps state invariants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Component;

use super::{Layout, layout::Hierarchy, parse};

/// As `crate::fuzzing::text` (not imported: `crate::fuzzing` re-exports this module, and the
/// module graph stays one way): the daemon reads its text files with `read_to_string`.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Flat keyed files (v1 memory.stat, cpuacct.stat, cpu.stat; v2 cpu.stat, memory.stat,
/// memory.events): the pairs rendered again parse to the same pairs, and each file's reader
/// reports exactly the values of its keys.
pub fn cgroup_flat_keyed(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let v1_memory = parse::parse_v1_memory_stat(text);
    let v1_cpu = parse::parse_v1_cpuacct_stat(text);
    let v1_cpu_stat = parse::parse_v1_cpu_stat(text);
    let v2_cpu = parse::parse_v2_cpu_stat(text);
    let v2_memory = parse::parse_v2_memory_stat(text);
    let v2_events = parse::parse_v2_memory_events(text);
    let Ok(values) = parse::parse_flat_keyed(text) else {
        assert!(v1_memory.is_err() && v1_cpu.is_err() && v2_cpu.is_err() && v2_memory.is_err());
        assert!(v1_cpu_stat.is_err() && v2_events.is_err());
        return;
    };
    assert!(!values.pairs().is_empty());
    let rendered: String = values
        .pairs()
        .iter()
        .map(|(k, v)| format!("{k} {v}\n"))
        .collect();
    assert_eq!(parse::parse_flat_keyed(&rendered).unwrap(), values);
    let get = |key: &str| values.get(key);
    let total_or_local = |key: &str| get(&format!("total_{key}")).or_else(|| get(key));
    let v1_memory = v1_memory.unwrap();
    assert_eq!(v1_memory.rss, total_or_local("rss"));
    assert_eq!(v1_memory.cache, total_or_local("cache"));
    assert_eq!(v1_memory.inactive_file, total_or_local("inactive_file"));
    assert_eq!(v1_memory.swap, total_or_local("swap"));
    let v1_cpu = v1_cpu.unwrap();
    assert_eq!(
        (v1_cpu.user_ticks, v1_cpu.system_ticks),
        (get("user"), get("system"))
    );
    let v1_cpu_stat = v1_cpu_stat.unwrap();
    assert_eq!(v1_cpu_stat.nr_periods, get("nr_periods"));
    assert_eq!(v1_cpu_stat.nr_throttled, get("nr_throttled"));
    assert_eq!(v1_cpu_stat.throttled_time_ns, get("throttled_time"));
    let v2_cpu = v2_cpu.unwrap();
    assert_eq!(v2_cpu.usage_usec, get("usage_usec"));
    assert_eq!(v2_cpu.user_usec, get("user_usec"));
    assert_eq!(v2_cpu.system_usec, get("system_usec"));
    assert_eq!(v2_cpu.nr_periods, get("nr_periods"));
    assert_eq!(v2_cpu.nr_throttled, get("nr_throttled"));
    assert_eq!(v2_cpu.throttled_usec, get("throttled_usec"));
    let v2_events = v2_events.unwrap();
    assert_eq!(
        (v2_events.high, v2_events.max, v2_events.oom),
        (get("high"), get("max"), get("oom"))
    );
    let v2_memory = v2_memory.unwrap();
    assert_eq!(v2_memory.rss, get("anon"));
    assert_eq!(v2_memory.cache, get("file"));
    assert_eq!(v2_memory.inactive_file, get("inactive_file"));
}

/// Values near the top of u64, so that the sums below must saturate.
const BIG: u64 = u64::MAX / 3 * 2;

/// v1 blkio service-bytes files: one more device's Read and Write lines add to the sums
/// (saturating, never wrapping or panicking).
pub fn cgroup_v1_blkio(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(bytes) = parse::parse_v1_blkio(text) else {
        return;
    };
    let more = format!("{text}\n1:1 Read {BIG}\n1:1 Write 7\n1:1 Total 9\nTotal 0\n");
    let after = parse::parse_v1_blkio(&more).expect("a file with one more device parses");
    assert_eq!(after.read, bytes.read.saturating_add(BIG));
    assert_eq!(after.write, bytes.write.saturating_add(7));
}

/// v2 io.stat: likewise, one more device's line adds to the sums.
pub fn cgroup_v2_io_stat(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(bytes) = parse::parse_v2_io_stat(text) else {
        return;
    };
    let more = format!("{text}\n1:1 rbytes={BIG} wbytes=7 rios=1 wios=1\n");
    let after = parse::parse_v2_io_stat(&more).expect("a file with one more device parses");
    assert_eq!(after.read, bytes.read.saturating_add(BIG));
    assert_eq!(after.write, bytes.write.saturating_add(7));
}

/// The small files: one number (memory.current, pids.current, cpuacct.usage...), a limit
/// (memory.max, pids.max, memory.limit_in_bytes), a CPU quota (v2 cpu.max, v1
/// cpu.cfs_quota_us), a list of ids (cgroup.procs, tasks) and of controllers
/// (cgroup.controllers). Limits and quotas agree with numbers; lists render and parse back.
pub fn cgroup_values(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let number = parse::parse_u64(text);
    match parse::parse_v1_cfs_quota(text) {
        Ok(None) => assert_eq!(text.trim(), "-1"),
        Ok(Some(quota)) => assert_eq!(number.as_ref().ok(), Some(&quota)),
        Err(_) => assert!(number.is_err()),
    }
    if let Ok(max) = parse::parse_v2_cpu_max(text) {
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 2);
        let period: u64 = fields[1].parse().unwrap();
        assert!(period > 0);
        match max {
            None => assert_eq!(fields[0], "max"),
            Some((quota, p)) => {
                assert_eq!(p, period);
                assert_eq!(fields[0].parse::<u64>().unwrap(), quota);
            }
        }
    }
    match parse::parse_limit(text) {
        Ok(Some(limit)) => assert_eq!(number.as_ref().ok(), Some(&limit)),
        // Unlimited: "max", or a number too large to be a real limit.
        Ok(None) => assert!(text.trim() == "max" || *number.as_ref().unwrap() >= 1 << 62),
        Err(_) => assert!(number.is_err()),
    }
    if let Ok(ids) = parse::parse_ids(text) {
        let rendered: String = ids.iter().map(|id| format!("{id}\n")).collect();
        assert_eq!(parse::parse_ids(&rendered).unwrap(), ids);
    }
    let controllers = parse::parse_controller_list(text);
    assert!(controllers.iter().all(|c| !c.is_empty()));
    assert_eq!(
        parse::parse_controller_list(&controllers.join(" ")),
        controllers
    );
}

/// PSI files (cpu.pressure, memory.pressure, io.pressure): what parses renders and parses
/// back to the same totals, and a line of a kind a later kernel may add changes nothing.
pub fn cgroup_pressure(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(totals) = parse::parse_pressure(text) else {
        return;
    };
    let mut rendered = format!(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total={}\n",
        totals.some_usec
    );
    if let Some(full) = totals.full_usec {
        rendered += &format!("full avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n");
    }
    assert_eq!(parse::parse_pressure(&rendered).unwrap(), totals);
    let later = format!("{text}\nlater avg10=1.00 total=7\n");
    assert_eq!(parse::parse_pressure(&later).unwrap(), totals);
}

/// /proc/<pid>/statm (the processes fallback for memory): what parses is seven numbers, and the
/// two kept are the second and third.
pub fn proc_statm(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(statm) = parse::parse_statm(text) else {
        return;
    };
    let fields: Vec<u64> = text
        .split_whitespace()
        .take(7)
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(
        (statm.resident_pages, statm.shared_pages),
        (fields[1], fields[2])
    );
}

/// /proc/self/mountinfo: the layout made of it is consistent, and each hierarchy's own root
/// path maps to its mount point.
pub fn mountinfo(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let parsed = parse::parse_mountinfo(text);
    let Ok(layout) = Layout::from_mountinfo(text) else {
        return;
    };
    let mounts = parsed.expect("a layout came from a mountinfo that does not parse");
    assert!(!layout.hierarchies.is_empty());
    assert!(layout.primary() < layout.hierarchies.len());
    assert_eq!(layout.mount_points().len(), layout.hierarchies.len());
    for h in &layout.hierarchies {
        assert!(
            mounts
                .iter()
                .any(|m| std::path::Path::new(&m.mount_point) == &*h.mount_point)
        );
        if let Ok(dir) = h.dir_of(&h.root) {
            assert_eq!(dir, *h.mount_point, "{h:?}");
        }
    }
}

/// /proc/<pid>/cgroup of a launcher: the cgroup the daemon makes a container in comes from
/// it, and a user may choose its path (delegated cgroups, names with newlines). Whatever the
/// text, the directory a path maps to stays inside the hierarchy's mount point, with no `..`,
/// and maps back to the same path.
pub fn proc_cgroup(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(entries) = parse::parse_proc_cgroup(text) else {
        return;
    };
    for entry in &entries {
        assert!(entry.path.starts_with('/'), "{entry:?}");
    }
    for layout in fuzz_layouts() {
        for h in &layout.hierarchies {
            let Ok(rel) = h.path_in(&entries) else {
                continue;
            };
            if let Ok(dir) = h.dir_of(rel) {
                check_inside(h, rel, &dir);
            }
        }
    }
}

fn check_inside(h: &Hierarchy, rel: &str, dir: &std::path::Path) {
    assert!(dir.starts_with(&h.mount_point), "{rel:?} -> {dir:?}");
    assert!(
        dir.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{rel:?} -> {dir:?}"
    );
    let back = h.rel_of(dir).expect("a mapped directory maps back");
    assert_eq!(
        h.dir_of(&back).ok().as_deref(),
        Some(dir),
        "{rel:?} -> {back:?}"
    );
}

/// A hybrid host, a pure v2 host, and a container that sees only a sub-tree of each hierarchy
/// (mountinfo root other than "/").
fn fuzz_layouts() -> Vec<Layout> {
    let bind = "1 0 0:30 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                2 0 0:31 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    [
        include_str!("fixtures/mountinfo_hybrid.txt"),
        include_str!("fixtures/mountinfo_v2.txt"),
        bind,
    ]
    .iter()
    .map(|text| Layout::from_mountinfo(text).expect("fixture layout"))
    .collect()
}
