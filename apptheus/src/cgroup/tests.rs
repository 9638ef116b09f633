//! Tests that need no privilege: layout detection on mountinfo fixtures, and containers in fake
//! cgroup trees made of plain files in a temporary directory.

use std::{fs, path::PathBuf};

use super::{
    layout::{Launcher, check_name, join_rel, last_components, read_proc_cgroup},
    *,
};

/// Every file of `container`, read by a new reader.
fn sample(container: &ContainerCgroup) -> Stats {
    Reader::new().sample(container)
}

const MOUNTINFO_HYBRID: &str = include_str!("fixtures/mountinfo_hybrid.txt");
const MOUNTINFO_V2: &str = include_str!("fixtures/mountinfo_v2.txt");
const MOUNTINFO_V1: &str = include_str!("fixtures/mountinfo_v1.txt");
const PROC_CGROUP_HYBRID: &str = include_str!("fixtures/proc_cgroup_hybrid.txt");
const PROC_CGROUP_V1: &str = include_str!("fixtures/proc_cgroup_v1.txt");
const V1_MEMORY_STAT: &str = include_str!("fixtures/v1_memory.stat");
const V1_CPUACCT_STAT: &str = include_str!("fixtures/v1_cpuacct.stat");
const V1_BLKIO: &str = include_str!("fixtures/v1_blkio.throttle.io_service_bytes_recursive");
const V1_LIMIT_UNLIMITED: &str = include_str!("fixtures/v1_memory.limit_in_bytes_unlimited");
const V2_CPU_STAT: &str = include_str!("fixtures/v2_cpu.stat");
const V2_MEMORY_STAT: &str = include_str!("fixtures/v2_memory.stat");
const V2_IO_STAT: &str = include_str!("fixtures/v2_io.stat");
const V2_CPU_PRESSURE: &str = include_str!("fixtures/v2_cpu.pressure");
const V2_MEMORY_PRESSURE: &str = include_str!("fixtures/v2_memory.pressure");
const V2_IO_PRESSURE: &str = include_str!("fixtures/v2_io.pressure");
const V2_MEMORY_EVENTS: &str = include_str!("fixtures/v2_memory.events");
const V1_CPU_STAT_THROTTLED: &str = include_str!("fixtures/v1_cpu.stat_throttled");

fn mount_points(layout: &Layout) -> Vec<String> {
    layout
        .mount_points()
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn layout_hybrid() {
    let layout = Layout::from_mountinfo(MOUNTINFO_HYBRID).unwrap();
    assert_eq!(layout.mode(), Mode::Hybrid);
    assert_eq!(
        mount_points(&layout),
        [
            "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/cpuacct",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/blkio",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
        ]
    );
    // The memory hierarchy names the container (the numbers come from v1 there).
    assert_eq!(layout.primary(), 2);
}

#[test]
fn layout_v2() {
    let layout = Layout::from_mountinfo(MOUNTINFO_V2).unwrap();
    assert_eq!(layout.mode(), Mode::V2);
    assert_eq!(mount_points(&layout), ["/sys/fs/cgroup"]);
}

#[test]
fn layout_v1_comounted() {
    let layout = Layout::from_mountinfo(MOUNTINFO_V1).unwrap();
    assert_eq!(layout.mode(), Mode::V1);
    assert_eq!(
        mount_points(&layout),
        [
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/blkio",
        ]
    );
    assert_eq!(*layout.hierarchies[0].controllers, ["cpu", "cpuacct"]);
    // Without a unified tree the memory hierarchy names the container.
    assert_eq!(layout.primary(), 2);
}

#[test]
fn layout_dedupes_bind_mounts() {
    let text = "\
50 1 0:32 /job /mnt/job-memory rw - cgroup cgroup rw,memory
51 1 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
    let layout = Layout::from_mountinfo(text).unwrap();
    assert_eq!(mount_points(&layout), ["/sys/fs/cgroup/memory"]);
}

#[test]
fn layout_without_cgroups() {
    assert!(Layout::from_mountinfo("").is_err());
    let only_systemd = "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
    assert!(Layout::from_mountinfo(only_systemd).is_err());
    assert!(Layout::from_mountinfo("garbage\n").is_err());
}

#[test]
fn hierarchy_paths() {
    let layout = Layout::from_mountinfo(MOUNTINFO_HYBRID).unwrap();
    let entries = parse::parse_proc_cgroup(PROC_CGROUP_HYBRID).unwrap();
    let memory = &layout.hierarchies[2];
    assert_eq!(
        memory.path_in(&entries).unwrap(),
        "/process_api/0c30c5eec2e8a3d1fe60261fe2e49728"
    );
    assert_eq!(
        memory.dir_of("/a/b").unwrap(),
        PathBuf::from("/sys/fs/cgroup/memory/a/b")
    );
    assert_eq!(
        memory.dir_of("/").unwrap(),
        PathBuf::from("/sys/fs/cgroup/memory")
    );
    assert!(memory.dir_of("relative").is_err());
    assert!(memory.dir_of("/a/../b").is_err());
    assert_eq!(layout.hierarchies[5].path_in(&entries).unwrap(), "/");

    let v1 = Layout::from_mountinfo(MOUNTINFO_V1).unwrap();
    let entries = parse::parse_proc_cgroup(PROC_CGROUP_V1).unwrap();
    assert_eq!(v1.hierarchies[0].path_in(&entries).unwrap(), "/user.slice");
    assert_eq!(
        v1.hierarchies[1].path_in(&entries).unwrap(),
        "/user.slice/user-1000.slice/session-3.scope"
    );
    // The v1 host has no unified line to offer a v2 hierarchy.
    let v2 = Layout::from_mountinfo(MOUNTINFO_V2).unwrap();
    assert!(v2.hierarchies[0].path_in(&entries).is_err());
}

#[test]
fn hierarchy_paths_below_a_bind_mounted_root() {
    let text = "40 31 0:38 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    let layout = Layout::from_mountinfo(text).unwrap();
    let unified = &layout.hierarchies[0];
    assert_eq!(
        unified.dir_of("/docker/abc/x").unwrap(),
        PathBuf::from("/sys/fs/cgroup/x")
    );
    assert_eq!(
        unified.dir_of("/docker/abc").unwrap(),
        PathBuf::from("/sys/fs/cgroup")
    );
    assert!(unified.dir_of("/docker/abcd").is_err());
    assert!(unified.dir_of("/other").is_err());
    assert_eq!(
        unified.rel_of(Path::new("/sys/fs/cgroup/x/y")).unwrap(),
        "/docker/abc/x/y"
    );
}

#[test]
fn names() {
    assert!(check_name("apptheus").is_ok());
    assert!(check_name("starter-suid_4242").is_ok());
    for bad in ["", ".", "..", "a/b", "/a", "a\nb"] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    assert_eq!(join_rel("/", "a"), "/a");
    assert_eq!(join_rel("/a", "b"), "/a/b");
    assert_eq!(
        last_components("/x/apptheus/c_1", 2).unwrap(),
        "apptheus/c_1"
    );
    assert!(last_components("/c_1", 2).is_none());
}

/// A fake cgroup tree in a temporary directory, with the mountinfo that describes it.
struct FakeTree {
    dir: tempfile::TempDir,
}

impl FakeTree {
    fn new() -> FakeTree {
        FakeTree {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, below: &str) -> PathBuf {
        self.dir.path().join(below)
    }

    /// Writes `text` to `below` (relative to the tree), making its directories.
    fn write(&self, below: &str, text: &str) {
        let path = self.path(below);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn mkdir(&self, below: &str) {
        fs::create_dir_all(self.path(below)).unwrap();
    }

    /// A mountinfo line for a v1 hierarchy (`options` like "cpu,cpuacct") or, with `None`,
    /// for cgroup2, mounted at `below`.
    fn mount_line(&self, device: u32, below: &str, options: Option<&str>) -> String {
        let point = self.path(below);
        fs::create_dir_all(&point).unwrap();
        match options {
            Some(options) => format!(
                "{device} 1 0:{device} / {} rw,relatime - cgroup cgroup rw,{options}\n",
                point.display()
            ),
            None => format!(
                "{device} 1 0:{device} / {} rw,relatime - cgroup2 cgroup2 rw\n",
                point.display()
            ),
        }
    }

    fn v2_layout(&self) -> Layout {
        Layout::from_mountinfo(&self.mount_line(90, "unified", None)).unwrap()
    }

    fn v1_layout(&self) -> Layout {
        let mut text = self.mount_line(91, "cpu,cpuacct", Some("cpu,cpuacct"));
        text += &self.mount_line(92, "memory", Some("memory"));
        text += &self.mount_line(93, "pids", Some("pids"));
        text += &self.mount_line(94, "blkio", Some("blkio"));
        Layout::from_mountinfo(&text).unwrap()
    }
}

/// A v2 container at /job/apptheus/c_1 with every controller, under a job with limits.
fn fake_v2_container(tree: &FakeTree) {
    tree.write("unified/job/memory.max", "1073741824\n");
    tree.write("unified/job/pids.max", "500\n");
    tree.write("unified/job/apptheus/memory.max", "max\n");
    tree.write("unified/job/apptheus/pids.max", "max\n");
    let c = "unified/job/apptheus/c_1";
    tree.write(&format!("{c}/cgroup.controllers"), "cpu io memory pids\n");
    tree.write(&format!("{c}/cgroup.procs"), "4242\n4243\n");
    tree.write(&format!("{c}/cpu.stat"), V2_CPU_STAT);
    tree.write(&format!("{c}/memory.current"), "1700000000\n");
    tree.write(&format!("{c}/memory.stat"), V2_MEMORY_STAT);
    tree.write(&format!("{c}/memory.swap.current"), "4096\n");
    tree.write(&format!("{c}/memory.peak"), "1800000000\n");
    tree.write(&format!("{c}/memory.max"), "2147483648\n");
    tree.write(&format!("{c}/pids.current"), "7\n");
    tree.write(&format!("{c}/pids.max"), "1000\n");
    tree.write(&format!("{c}/io.stat"), V2_IO_STAT);
    tree.write(&format!("{c}/cpu.pressure"), V2_CPU_PRESSURE);
    tree.write(&format!("{c}/memory.pressure"), V2_MEMORY_PRESSURE);
    tree.write(&format!("{c}/io.pressure"), V2_IO_PRESSURE);
    tree.write(&format!("{c}/memory.events"), V2_MEMORY_EVENTS);
}

#[test]
fn v2_sample_from_fake_tree() {
    let tree = FakeTree::new();
    fake_v2_container(&tree);
    let layout = tree.v2_layout();
    let container = layout.open("/job/apptheus/c_1", &[], &[]).unwrap();
    assert_eq!(container.rel_path(), "/job/apptheus/c_1");
    assert_eq!(container.dirs(), [tree.path("unified/job/apptheus/c_1")]);
    assert_eq!(container.procs(), [4242, 4243]);
    assert_eq!(container.memory_source(), Source::Cgroup);
    assert_eq!(container.pids_source(), Source::Cgroup);
    assert_eq!(
        sample(&container),
        Stats {
            cpu: Some(Cpu {
                usage_seconds: Some(2934.589123),
                user_seconds: Some(2511.034),
                system_seconds: Some(423.555123),
            }),
            memory: Some(Memory {
                usage_bytes: Some(1700000000),
                working_set_bytes: Some(1700000000 - 402653184),
                rss_bytes: Some(1073741824),
                cache_bytes: Some(536870912),
                swap_bytes: Some(4096),
                max_usage_bytes: Some(1800000000),
                // The job's 1 GiB is below the container's own 2 GiB.
                limit_bytes: Some(1073741824),
            }),
            pids: Some(Pids {
                current: Some(7),
                limit: Some(500),
            }),
            io: Some(Io {
                read_bytes: 1459200 + 90430464,
                write_bytes: 314773504 + 299008000,
            }),
            pressure: Pressures {
                cpu: Some(Pressure {
                    waiting_seconds: 2.263303,
                    stalled_seconds: Some(2.083218),
                }),
                memory: Some(Pressure {
                    waiting_seconds: 0.018085,
                    stalled_seconds: Some(0.007957),
                }),
                io: Some(Pressure {
                    waiting_seconds: 0.00087,
                    stalled_seconds: Some(0.000701),
                }),
            },
            // cpu.stat's bandwidth counters, read with the CPU times.
            throttling: Some(Throttling {
                periods: 1543,
                throttled_periods: 12,
                throttled_seconds: 0.981234,
            }),
            memory_events: Some(MemoryEvents {
                high: Some(12),
                max: Some(37),
                oom: Some(2),
            }),
        }
    );
}

#[test]
fn v2_sample_with_missing_and_garbled_files() {
    let tree = FakeTree::new();
    fake_v2_container(&tree);
    let c = "unified/job/apptheus/c_1";
    fs::remove_file(tree.path(&format!("{c}/memory.peak"))).unwrap();
    fs::remove_file(tree.path(&format!("{c}/memory.swap.current"))).unwrap();
    tree.write(&format!("{c}/memory.stat"), "anon 12\nfile");
    tree.write(&format!("{c}/io.stat"), "garbage\n");
    tree.write(&format!("{c}/pids.max"), "lots\n");
    tree.write(&format!("{c}/cpu.stat"), "");
    tree.write(&format!("{c}/cpu.pressure"), "some avg10=0.00 total=\n");
    fs::remove_file(tree.path(&format!("{c}/io.pressure"))).unwrap();
    tree.write(&format!("{c}/memory.events"), "max 1\noom");
    let stats = sample(
        &tree
            .v2_layout()
            .open("/job/apptheus/c_1", &[], &[])
            .unwrap(),
    );
    assert_eq!(
        stats,
        Stats {
            memory: Some(Memory {
                usage_bytes: Some(1700000000),
                limit_bytes: Some(1073741824),
                ..Memory::default()
            }),
            pids: Some(Pids {
                current: Some(7),
                limit: None,
            }),
            pressure: Pressures {
                memory: Some(Pressure {
                    waiting_seconds: 0.018085,
                    stalled_seconds: Some(0.007957),
                }),
                ..Pressures::default()
            },
            ..Stats::default()
        }
    );
}

#[test]
fn v2_without_controllers_uses_processes() {
    let tree = FakeTree::new();
    let c = "unified/job/apptheus/c_1";
    // Like a nested container whose base holds processes: no controller reached it.
    tree.write(&format!("{c}/cgroup.controllers"), "\n");
    tree.write(
        &format!("{c}/cgroup.procs"),
        &format!("{}\n", std::process::id()),
    );
    tree.write(&format!("{c}/cgroup.threads"), "1\n2\n3\n");
    tree.write(&format!("{c}/cpu.stat"), V2_CPU_STAT);
    tree.write(&format!("{c}/memory.max"), "100\n");
    // The job's limits above it still hold its processes.
    tree.write("unified/job/memory.max", "1073741824\n");
    tree.write("unified/job/pids.max", "50\n");
    tree.write("unified/job/apptheus/pids.max", "max\n");
    let container = tree
        .v2_layout()
        .open("/job/apptheus/c_1", &[], &[])
        .unwrap();
    assert_eq!(container.memory_source(), Source::Processes);
    assert_eq!(container.pids_source(), Source::Processes);
    let stats = sample(&container);
    // cpu.stat is there without the cpu controller.
    assert_eq!(stats.cpu.unwrap().usage_seconds, Some(2934.589123));
    let memory = stats.memory.unwrap();
    let usage = memory.usage_bytes.unwrap();
    assert!(usage > 0);
    assert_eq!(memory.working_set_bytes, Some(usage));
    assert!(memory.rss_bytes.unwrap() <= usage);
    assert_eq!(memory.cache_bytes, None);
    assert_eq!(memory.swap_bytes, None);
    assert_eq!(memory.max_usage_bytes, None);
    assert_eq!(memory.limit_bytes, Some(1073741824));
    assert_eq!(
        stats.pids,
        Some(Pids {
            current: Some(3),
            limit: Some(50),
        })
    );
    assert_eq!(stats.io, None);
}

/// A v1 container at /job/apptheus/c_1 in each hierarchy.
fn fake_v1_container(tree: &FakeTree) {
    let cpu = "cpu,cpuacct/job/apptheus/c_1";
    tree.write(&format!("{cpu}/cgroup.procs"), "4242\n");
    tree.write(&format!("{cpu}/cpuacct.usage"), "962461725\n");
    tree.write(&format!("{cpu}/cpuacct.usage_user"), "100000000\n");
    tree.write(&format!("{cpu}/cpuacct.usage_sys"), "951843546\n");
    tree.write(&format!("{cpu}/cpuacct.stat"), V1_CPUACCT_STAT);
    tree.write(&format!("{cpu}/cpu.stat"), V1_CPU_STAT_THROTTLED);
    tree.write("memory/memory.limit_in_bytes", V1_LIMIT_UNLIMITED);
    tree.write("memory/job/memory.limit_in_bytes", "536870912\n");
    tree.write(
        "memory/job/apptheus/memory.limit_in_bytes",
        V1_LIMIT_UNLIMITED,
    );
    let memory = "memory/job/apptheus/c_1";
    tree.write(&format!("{memory}/cgroup.procs"), "4242\n");
    tree.write(&format!("{memory}/memory.usage_in_bytes"), "146718720\n");
    tree.write(&format!("{memory}/memory.stat"), V1_MEMORY_STAT);
    tree.write(
        &format!("{memory}/memory.memsw.usage_in_bytes"),
        "146718720\n",
    );
    tree.write(
        &format!("{memory}/memory.max_usage_in_bytes"),
        "146808832\n",
    );
    tree.write(
        &format!("{memory}/memory.limit_in_bytes"),
        V1_LIMIT_UNLIMITED,
    );
    tree.write(&format!("{memory}/memory.failcnt"), "106\n");
    tree.write(&format!("{memory}/memory.memsw.failcnt"), "3\n");
    let pids = "pids/job/apptheus/c_1";
    tree.write(&format!("{pids}/cgroup.procs"), "4242\n");
    tree.write(&format!("{pids}/pids.current"), "3\n");
    tree.write(&format!("{pids}/pids.max"), "max\n");
    let blkio = "blkio/job/apptheus/c_1";
    tree.write(&format!("{blkio}/cgroup.procs"), "4242\n");
    tree.write(
        &format!("{blkio}/blkio.throttle.io_service_bytes_recursive"),
        V1_BLKIO,
    );
}

#[test]
fn v1_sample_from_fake_tree() {
    let tree = FakeTree::new();
    fake_v1_container(&tree);
    let layout = tree.v1_layout();
    let container = layout.open("/job/apptheus/c_1", &[], &[]).unwrap();
    assert_eq!(container.dirs().len(), 4);
    assert_eq!(container.memory_source(), Source::Cgroup);
    assert_eq!(container.pids_source(), Source::Cgroup);
    assert_eq!(
        sample(&container),
        Stats {
            cpu: Some(Cpu {
                usage_seconds: Some(0.962461725),
                user_seconds: Some(0.1),
                system_seconds: Some(0.951843546),
            }),
            memory: Some(Memory {
                usage_bytes: Some(146718720),
                working_set_bytes: Some(146718720 - 80764928),
                rss_bytes: Some(59736064),
                cache_bytes: Some(84774912),
                // total_swap of memory.stat.
                swap_bytes: Some(0),
                max_usage_bytes: Some(146808832),
                // The job's limit: the container itself is unlimited.
                limit_bytes: Some(536870912),
            }),
            pids: Some(Pids {
                current: Some(3),
                limit: None,
            }),
            io: Some(Io {
                read_bytes: 67108864,
                write_bytes: 16777216,
            }),
            // No unified tree: no PSI.
            pressure: Pressures::default(),
            throttling: Some(Throttling {
                periods: 25,
                throttled_periods: 25,
                throttled_seconds: 3.020591382,
            }),
            // failcnt of memory and of memory+swap; v1 counts no high or oom events.
            memory_events: Some(MemoryEvents {
                high: None,
                max: Some(109),
                oom: None,
            }),
        }
    );
}

#[test]
fn v1_cpu_from_usage_all() {
    let tree = FakeTree::new();
    fake_v1_container(&tree);
    // One file for user and system; it wins over the other files. The total is
    // cpuacct.usage's (the scheduler's runtime: the split is sampled at each tick).
    tree.write(
        "cpu,cpuacct/job/apptheus/c_1/cpuacct.usage_all",
        "cpu user system\n0 1000000000 250000000\n1 500000000 0\n",
    );
    let stats = sample(
        &tree
            .v1_layout()
            .open("/job/apptheus/c_1", &[], &[])
            .unwrap(),
    );
    assert_eq!(
        stats.cpu,
        Some(Cpu {
            usage_seconds: Some(0.962461725),
            user_seconds: Some(1.5),
            system_seconds: Some(0.25),
        })
    );
}

#[test]
fn v1_fallbacks() {
    let tree = FakeTree::new();
    fake_v1_container(&tree);
    let cpu = "cpu,cpuacct/job/apptheus/c_1";
    // Kernels before 4.7 have only cpuacct.stat for user and system time.
    fs::remove_file(tree.path(&format!("{cpu}/cpuacct.usage_user"))).unwrap();
    fs::remove_file(tree.path(&format!("{cpu}/cpuacct.usage_sys"))).unwrap();
    // A memory.stat without total_swap: swap comes from memsw minus usage.
    let memory = "memory/job/apptheus/c_1";
    tree.write(&format!("{memory}/memory.stat"), "total_rss 10\n");
    tree.write(
        &format!("{memory}/memory.memsw.usage_in_bytes"),
        "146722816\n",
    );
    // Only the non-recursive throttle file.
    let blkio = "blkio/job/apptheus/c_1";
    fs::remove_file(tree.path(&format!(
        "{blkio}/blkio.throttle.io_service_bytes_recursive"
    )))
    .unwrap();
    tree.write(
        &format!("{blkio}/blkio.throttle.io_service_bytes"),
        "8:0 Read 5\n8:0 Write 6\nTotal 11\n",
    );
    let stats = sample(
        &tree
            .v1_layout()
            .open("/job/apptheus/c_1", &[], &[])
            .unwrap(),
    );
    let hz = procfs::ticks_per_second() as f64;
    let (cpu, memory) = (stats.cpu.unwrap(), stats.memory.unwrap());
    assert_eq!(cpu.user_seconds, Some(8.0 / hz));
    assert_eq!(cpu.system_seconds, Some(86.0 / hz));
    assert_eq!(memory.rss_bytes, Some(10));
    assert_eq!(memory.cache_bytes, None);
    assert_eq!(memory.working_set_bytes, None);
    assert_eq!(memory.swap_bytes, Some(4096));
    assert_eq!(
        stats.io,
        Some(Io {
            read_bytes: 5,
            write_bytes: 6,
        })
    );
}

#[test]
fn v1_without_pids_hierarchy_counts_tasks() {
    let tree = FakeTree::new();
    let mut text = tree.mount_line(92, "memory", Some("memory"));
    text += &tree.mount_line(91, "cpu,cpuacct", Some("cpu,cpuacct"));
    let layout = Layout::from_mountinfo(&text).unwrap();
    tree.write("memory/c_1/tasks", "10\n11\n");
    tree.mkdir("cpu,cpuacct/c_1");
    let container = layout.open("/c_1", &[], &[]).unwrap();
    assert_eq!(container.pids_source(), Source::Processes);
    assert_eq!(container.memory_source(), Source::Cgroup);
    assert_eq!(sample(&container).pids.unwrap().current, Some(2));
}

#[test]
fn open_missing_container() {
    let tree = FakeTree::new();
    assert!(
        tree.v2_layout()
            .open("/job/apptheus/c_9", &[], &[])
            .is_none()
    );
    assert!(tree.v2_layout().open("not-absolute", &[], &[]).is_none());
}

#[test]
fn open_finds_differing_paths_of_a_hybrid_host() {
    // Nested placement on a hybrid host: each hierarchy had its own base.
    let tree = FakeTree::new();
    let mut text = tree.mount_line(92, "memory", Some("memory"));
    text += &tree.mount_line(90, "unified", None);
    let layout = Layout::from_mountinfo(&text).unwrap();
    tree.mkdir("memory/batch/job_7/apptheus/c_1");
    tree.mkdir("unified/user.slice/session-1.scope/apptheus/c_1");
    tree.mkdir("unified/user.slice/session-1.scope/apptheus/c_2");
    let container = layout.open("/batch/job_7/apptheus/c_1", &[], &[]).unwrap();
    assert_eq!(container.rel_path(), "/batch/job_7/apptheus/c_1");
    assert_eq!(
        container.dirs(),
        [
            tree.path("memory/batch/job_7/apptheus/c_1"),
            tree.path("unified/user.slice/session-1.scope/apptheus/c_1"),
        ]
    );
    // Two candidates cannot be told apart: the hierarchy is left out.
    tree.mkdir("unified/other/apptheus/c_1");
    let container = layout.open("/batch/job_7/apptheus/c_1", &[], &[]).unwrap();
    assert_eq!(
        container.dirs(),
        [tree.path("memory/batch/job_7/apptheus/c_1")]
    );
}

#[test]
fn list_finds_containers_in_both_placements() {
    let tree = FakeTree::new();
    let layout = tree.v2_layout();
    tree.mkdir("unified/apptheus/exec_1");
    tree.mkdir("unified/user.slice/session-1.scope/apptheus/exec_2");
    tree.mkdir("unified/user.slice/other/exec_3");
    tree.write("unified/apptheus/not-a-dir", "");
    assert_eq!(
        layout.list("apptheus"),
        [
            "/apptheus/exec_1",
            "/user.slice/session-1.scope/apptheus/exec_2"
        ]
    );
}

#[test]
fn create_and_remove_in_fake_tree() {
    let tree = FakeTree::new();
    let mut text = tree.mount_line(92, "memory", Some("memory"));
    text += &tree.mount_line(90, "unified", None);
    let layout = Layout::from_mountinfo(&text).unwrap();
    // The parent already exists in the memory hierarchy (an administrator made it).
    tree.mkdir("memory/apptheus");
    let container = layout.create(None, "apptheus", "exec_1", &[]).unwrap();
    assert_eq!(container.rel_path(), "/apptheus/exec_1");
    let dirs = container.dirs();
    assert_eq!(
        dirs,
        [
            tree.path("memory/apptheus/exec_1"),
            tree.path("unified/apptheus/exec_1"),
        ]
    );
    assert!(dirs.iter().all(|d| d.is_dir()));
    // A second container shares the parents.
    let second = layout.create(None, "apptheus", "exec_2", &[]).unwrap();
    container.remove().unwrap();
    assert!(dirs.iter().all(|d| !d.exists()));
    // Removing again is fine: gone counts as removed.
    container.remove().unwrap();
    assert!(tree.path("unified/apptheus/exec_2").is_dir());
    second.remove().unwrap();
    // The parent this module did not make stays; the one it made goes.
    assert!(tree.path("memory/apptheus").is_dir());
    // `container` made unified/apptheus, `second` found it: it stays too, empty. Only the
    // container that made a parent removes it.
    assert!(tree.path("unified/apptheus").is_dir());
}

#[test]
fn remove_deletes_the_parent_it_made() {
    let tree = FakeTree::new();
    let layout = tree.v2_layout();
    let container = layout.create(None, "apptheus", "exec_1", &[]).unwrap();
    assert!(tree.path("unified/apptheus/exec_1").is_dir());
    container.remove().unwrap();
    assert!(!tree.path("unified/apptheus").exists());
}

#[test]
fn remove_reports_a_busy_container() {
    let tree = FakeTree::new();
    let layout = tree.v2_layout();
    let container = layout.create(None, "apptheus", "exec_1", &[]).unwrap();
    // A plain directory that is not empty stands in for a cgroup with processes.
    tree.write("unified/apptheus/exec_1/leftover", "");
    let error = container.remove().unwrap_err();
    assert!(format!("{error:#}").contains("exec_1"), "{error:#}");
    assert!(tree.path("unified/apptheus").is_dir());
    fs::remove_file(tree.path("unified/apptheus/exec_1/leftover")).unwrap();
    container.remove().unwrap();
    assert!(!tree.path("unified/apptheus").exists());
}

#[test]
fn create_makes_an_empty_leftover_anew_and_refuses_a_busy_one() {
    let tree = FakeTree::new();
    let layout = tree.v2_layout();
    tree.mkdir("unified/apptheus/exec_1");
    let container = layout.create(None, "apptheus", "exec_1", &[]).unwrap();
    container.remove().unwrap();
    assert!(!tree.path("unified/apptheus/exec_1").exists());
    // The parent was there before: kept.
    assert!(tree.path("unified/apptheus").is_dir());
    // A leftover that still holds something (here a file: rmdir refuses it, as the kernel
    // refuses a cgroup with processes) is never taken over.
    tree.write("unified/apptheus/exec_2/cgroup.procs", "4242\n");
    assert!(layout.create(None, "apptheus", "exec_2", &[]).is_err());
    assert_eq!(
        fs::read_to_string(tree.path("unified/apptheus/exec_2/cgroup.procs")).unwrap(),
        "4242\n"
    );
}

#[test]
fn create_refuses_bad_names() {
    let tree = FakeTree::new();
    let layout = tree.v2_layout();
    for (parent, id) in [("a/b", "c"), ("apptheus", ".."), ("", "x")] {
        assert!(layout.create(None, parent, id, &[]).is_err());
    }
}

#[test]
fn create_undoes_a_partial_container() {
    let tree = FakeTree::new();
    let mut text = tree.mount_line(92, "memory", Some("memory"));
    text += &tree.mount_line(90, "unified", None);
    let layout = Layout::from_mountinfo(&text).unwrap();
    // A file where the unified parent should be makes the second mkdir fail.
    tree.write("unified/apptheus", "");
    let error = layout.create(None, "apptheus", "exec_1", &[]).unwrap_err();
    assert!(format!("{error:#}").contains("apptheus"), "{error:#}");
    assert!(!tree.path("memory/apptheus").exists());
}

#[test]
fn nested_create_follows_the_launcher() {
    // This test process stands in for the launcher; its real cgroup paths are used below a
    // fake mount, so the base directories must exist there first.
    let entries = read_proc_cgroup(std::process::id() as i32).unwrap();
    let tree = FakeTree::new();
    let layout = tree.v2_layout();
    let Ok(base) = layout.hierarchies[0].path_in(&entries) else {
        // A host without a unified line in /proc/self/cgroup (pure v1): nothing to follow.
        return;
    };
    let base = base.to_string();
    fs::create_dir_all(layout.hierarchies[0].dir_of(&base).unwrap()).unwrap();
    let launcher = layout.launcher(std::process::id() as i32).unwrap();
    let container = layout
        .create(Some(&launcher), "apptheus", "exec_1", &[])
        .unwrap();
    assert_eq!(container.rel_path(), join_rel(&base, "apptheus/exec_1"));
    container.remove().unwrap();
}

/// A launcher (pid 4242) in the v2 cgroup /job/step/task_0 of a fake tree, with `procs` in it.
fn launcher_in_leaf(tree: &FakeTree, procs: &str) -> (Layout, Launcher) {
    let layout = tree.v2_layout();
    let leaf = "unified/job/step/task_0";
    tree.write(&format!("{leaf}/cgroup.procs"), procs);
    tree.write(
        &format!("{leaf}/cgroup.controllers"),
        "cpu io memory pids\n",
    );
    tree.write(&format!("{leaf}/cgroup.subtree_control"), "");
    let entries = parse::parse_proc_cgroup("0::/job/step/task_0\n").unwrap();
    (layout, Launcher::from_entries(entries))
}

#[test]
fn a_leaf_holding_only_the_container_is_its_cgroup_as_it_is() {
    let tree = FakeTree::new();
    let (layout, launcher) = launcher_in_leaf(&tree, "4242\n4243\n");
    let container = layout
        .create(
            Some(&launcher),
            "apptheus",
            "exec_4242",
            &[4242, 4243, 4244],
        )
        .unwrap();
    assert_eq!(container.rel_path(), "/job/step/task_0");
    assert_eq!(container.adopted(), [tree.path("unified/job/step/task_0")]);
    assert!(container.made_parents().is_empty());
    assert_eq!(container.memory_source(), Source::Cgroup);
    // Nothing made, nothing written, nothing removed.
    assert!(!tree.path("unified/job/step/task_0/apptheus").exists());
    // This test's own process stands in (adopted: nothing is written).
    let me = std::process::id() as i32;
    let held = crate::pidfd::Process::new(me, crate::pidfd::Pidfd::open(me).unwrap().unwrap());
    assert_eq!(container.add_process(&held).unwrap(), Moved::Done);
    assert_eq!(
        fs::read_to_string(tree.path("unified/job/step/task_0/cgroup.procs")).unwrap(),
        "4242\n4243\n"
    );
    container.remove().unwrap();
    assert!(tree.path("unified/job/step/task_0").is_dir());
    // After a restart the state file says it is adopted: still not ours.
    let again = layout
        .open("/job/step/task_0", &[], &container.adopted())
        .unwrap();
    assert_eq!(again.adopted(), container.adopted());
}

#[test]
fn a_leaf_shared_with_other_processes_gets_a_child_and_is_not_changed() {
    let tree = FakeTree::new();
    let (layout, launcher) = launcher_in_leaf(&tree, "4242\n999\n");
    let container = layout
        .create(Some(&launcher), "apptheus", "exec_4242", &[4242])
        .unwrap();
    assert_eq!(container.rel_path(), "/job/step/task_0/apptheus/exec_4242");
    assert!(container.adopted().is_empty());
    // The launcher's cgroup holds processes: its subtree_control is never written.
    assert_eq!(
        fs::read_to_string(tree.path("unified/job/step/task_0/cgroup.subtree_control")).unwrap(),
        ""
    );
    container.remove().unwrap();
    assert!(!tree.path("unified/job/step/task_0/apptheus").exists());
}

#[test]
fn a_crowded_leaf_is_not_read_again_for_a_second() {
    let tree = FakeTree::new();
    // A launcher among a hundred others (a burst of launchers in one login session's cgroup).
    let crowd: String = (5000..5100).map(|p| format!("{p}\n")).collect();
    let (layout, launcher) = launcher_in_leaf(&tree, &format!("4242\n{crowd}"));
    let first = layout
        .create(Some(&launcher), "apptheus", "exec_4242", &[4242])
        .unwrap();
    assert!(first.adopted().is_empty());
    // The others left a moment ago: taken to be there still (a child, as for the others).
    tree.write("unified/job/step/task_0/cgroup.procs", "4243\n");
    let second = layout
        .create(Some(&launcher), "apptheus", "exec_4243", &[4243])
        .unwrap();
    assert_eq!(second.rel_path(), "/job/step/task_0/apptheus/exec_4243");
    // A few others are read every time: a leaf they leave is adopted at once.
    let (layout, launcher) = launcher_in_leaf(&tree, "4244\n999\n");
    let third = layout
        .create(Some(&launcher), "apptheus", "exec_4244", &[4244])
        .unwrap();
    assert!(third.adopted().is_empty());
    tree.write("unified/job/step/task_0/cgroup.procs", "4245\n");
    let fourth = layout
        .create(Some(&launcher), "apptheus", "exec_4245", &[4245])
        .unwrap();
    assert_eq!(fourth.rel_path(), "/job/step/task_0");
    for c in [first, second, third] {
        c.remove().unwrap();
    }
}

#[test]
fn the_cpu_probe_reads_the_kernels_cpu_time() {
    let tree = FakeTree::new();
    fake_v1_container(&tree);
    let cpu = "cpu,cpuacct/job/apptheus/c_1/cpuacct.usage";
    let container = tree
        .v1_layout()
        .open("/job/apptheus/c_1", &[], &[])
        .unwrap();
    let mut reader = Reader::new();
    let probe = reader.probe(&container);
    let value = probe.value.expect("cpuacct.usage");
    assert_eq!(reader.read_all(&container, &probe), sample(&container));
    tree.write(cpu, &format!("{}\n", value + 1));
    assert_eq!(reader.probe(&container).value, Some(value + 1));
    // No probe file: no value, which the sampler reads as "something may have run". (The open
    // probe of a deleted regular file still reads; cgroupfs fails it, as host_tests shows.)
    fs::remove_file(tree.path(cpu)).unwrap();
    container.close_probe();
    assert_eq!(reader.probe(&container).value, None);
}

#[test]
fn v2_probe_is_cpu_stat_read_once() {
    let tree = FakeTree::new();
    fake_v2_container(&tree);
    let container = tree
        .v2_layout()
        .open("/job/apptheus/c_1", &[], &[])
        .unwrap();
    let mut reader = Reader::new();
    let probe = reader.probe(&container);
    assert!(probe.value.is_some());
    let stats = reader.read_all(&container, &probe);
    assert_eq!(stats, sample(&container));
    assert!(stats.cpu.unwrap().user_seconds.is_some());
    // The full read takes the CPU times from the probe's read, not from the file again.
    tree.write(
        "unified/job/apptheus/c_1/cpu.stat",
        "usage_usec 1\nuser_usec 1\nsystem_usec 0\n",
    );
    assert_eq!(reader.read_all(&container, &probe), stats);
}

#[test]
fn disabled_groups_are_not_read() {
    use crate::collectors::Collectors;
    let tree = FakeTree::new();
    fake_v2_container(&tree);
    let container = tree
        .v2_layout()
        .open("/job/apptheus/c_1", &[], &[])
        .unwrap();
    let all = sample(&container);
    let off = Collectors::disabling("pressure,throttling,memory_events,io").unwrap();
    let stats = Reader::with_collectors(off).sample(&container);
    assert_eq!(
        stats,
        Stats {
            pressure: Pressures::default(),
            throttling: None,
            memory_events: None,
            io: None,
            ..all.clone()
        }
    );
    assert!(all.pressure.cpu.is_some() && all.throttling.is_some());
}

#[test]
fn without_the_cpu_controller_v2_has_pressure_but_no_throttling() {
    let tree = FakeTree::new();
    let c = "unified/job/apptheus/c_1";
    tree.write(&format!("{c}/cgroup.controllers"), "\n");
    tree.write(&format!("{c}/cgroup.procs"), "1\n");
    tree.write(
        &format!("{c}/cpu.stat"),
        include_str!("fixtures/v2_cpu.stat_no_controller"),
    );
    // Before Linux 5.13: cpu.pressure has no "full" line.
    tree.write(
        &format!("{c}/cpu.pressure"),
        include_str!("fixtures/v2_cpu.pressure_5.10"),
    );
    let container = tree
        .v2_layout()
        .open("/job/apptheus/c_1", &[], &[])
        .unwrap();
    let mut reader = Reader::new();
    let probe = reader.probe(&container);
    let stats = reader.read_all(&container, &probe);
    assert_eq!(stats.throttling, None);
    assert_eq!(
        stats.pressure.cpu,
        Some(Pressure {
            waiting_seconds: 3.845216,
            stalled_seconds: None,
        })
    );
    // No memory controller: no memory events; no memory.pressure file: none either.
    assert_eq!(stats.memory_events, None);
    assert_eq!(stats.pressure.memory, None);
}

#[test]
fn v1_memory_events_without_swap_accounting() {
    let tree = FakeTree::new();
    fake_v1_container(&tree);
    fs::remove_file(tree.path("memory/job/apptheus/c_1/memory.memsw.failcnt")).unwrap();
    let container = tree
        .v1_layout()
        .open("/job/apptheus/c_1", &[], &[])
        .unwrap();
    assert_eq!(
        sample(&container).memory_events,
        Some(MemoryEvents {
            high: None,
            max: Some(106),
            oom: None,
        })
    );
    tree.write("memory/job/apptheus/c_1/memory.failcnt", "garbage\n");
    assert_eq!(sample(&container).memory_events, None);
}

#[test]
fn cpu_quota_is_the_smallest_along_the_path() {
    let tree = FakeTree::new();
    fake_v1_container(&tree);
    let cpu = "cpu,cpuacct";
    tree.write(&format!("{cpu}/cpu.cfs_quota_us"), "-1\n");
    tree.write(&format!("{cpu}/cpu.cfs_period_us"), "100000\n");
    tree.write(&format!("{cpu}/job/cpu.cfs_quota_us"), "150000\n");
    tree.write(&format!("{cpu}/job/cpu.cfs_period_us"), "100000\n");
    tree.write(&format!("{cpu}/job/apptheus/cpu.cfs_quota_us"), "-1\n");
    tree.write(&format!("{cpu}/job/apptheus/c_1/cpu.cfs_quota_us"), "-1\n");
    tree.write(
        &format!("{cpu}/job/apptheus/c_1/cpu.cfs_period_us"),
        "100000\n",
    );
    let container = tree
        .v1_layout()
        .open("/job/apptheus/c_1", &[], &[])
        .unwrap();
    assert_eq!(Reader::new().cpu_quota(&container), Some(1.5));
    // A quota of its own below the job's wins.
    tree.write(
        &format!("{cpu}/job/apptheus/c_1/cpu.cfs_quota_us"),
        "20000\n",
    );
    assert_eq!(Reader::new().cpu_quota(&container), Some(0.2));
    // None anywhere.
    tree.write(&format!("{cpu}/job/cpu.cfs_quota_us"), "-1\n");
    tree.write(&format!("{cpu}/job/apptheus/c_1/cpu.cfs_quota_us"), "-1\n");
    assert_eq!(Reader::new().cpu_quota(&container), None);

    // v2: the container has no cpu controller (no cpu.max of its own); the job's counts.
    let tree = FakeTree::new();
    fake_v2_container(&tree);
    tree.write("unified/job/cpu.max", "200000 100000\n");
    tree.write("unified/job/apptheus/cpu.max", "max 100000\n");
    let container = tree
        .v2_layout()
        .open("/job/apptheus/c_1", &[], &[])
        .unwrap();
    assert_eq!(Reader::new().cpu_quota(&container), Some(2.0));
    tree.write("unified/job/apptheus/c_1/cpu.max", "50000 100000\n");
    assert_eq!(Reader::new().cpu_quota(&container), Some(0.5));
}

#[test]
fn final_values_keep_the_older_ones_where_the_files_are_gone() {
    let older = Stats {
        memory: Some(Memory {
            usage_bytes: Some(10),
            limit_bytes: Some(100),
            ..Memory::default()
        }),
        pressure: Pressures {
            cpu: Some(Pressure {
                waiting_seconds: 1.0,
                stalled_seconds: Some(0.5),
            }),
            ..Pressures::default()
        },
        throttling: Some(Throttling {
            periods: 3,
            throttled_periods: 2,
            throttled_seconds: 0.1,
        }),
        memory_events: Some(MemoryEvents {
            high: None,
            max: Some(4),
            oom: Some(1),
        }),
        ..Stats::default()
    };
    let newer = Stats {
        memory: Some(Memory {
            usage_bytes: Some(20),
            ..Memory::default()
        }),
        memory_events: Some(MemoryEvents {
            max: Some(5),
            ..MemoryEvents::default()
        }),
        ..Stats::default()
    };
    let merged = newer.or(&older);
    assert_eq!(merged.pressure, older.pressure);
    assert_eq!(merged.throttling, older.throttling);
    // Field by field within a group: a file gone keeps its older number, a newer one wins.
    assert_eq!(
        merged.memory,
        Some(Memory {
            usage_bytes: Some(20),
            limit_bytes: Some(100),
            ..Memory::default()
        })
    );
    assert_eq!(
        merged.memory_events,
        Some(MemoryEvents {
            high: None,
            max: Some(5),
            oom: Some(1),
        })
    );
}
