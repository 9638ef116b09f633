//! apptheus as the field runs it: a launcher inside a batch job's cgroup, on this machine's
//! cgroups as they are. In the VM guests (`cargo xtask vm`, part of `cargo xtask test` on 5.10,
//! 6.1 and 6.12) that is pure cgroup v2, as on RHEL 9, Ubuntu and Debian sites; on this
//! project's hybrid hosts the same tests run with the job's cgroup in every v1 hierarchy the
//! daemon reads and in the unified tree beside them (what a v1 batch system makes).
//!
//! Three placements, each with its own test:
//! - nested, the job's leaf holds nothing but the launcher (Slurm's task cgroup): that leaf is
//!   the container's cgroup, untouched;
//! - nested, the leaf is shared with a foreign process (a batch script's shell): the container
//!   gets `<leaf>/<parent>/<id>`, the foreign process stays;
//! - dedicated: the container's cgroup is under the root, out of the job.
//!
//! Each prints what it measured (`cargo xtask test` and `cargo xtask vm` show it): the numbers
//! behind the "Supported platforms" table of docs/platforms.md.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{
    Daemon, Workload, bin, cgroup_of,
    cgroups::{self, Mode, TestCgroup},
    descendants, eventually, sample, workload_bin,
};

const MIB: f64 = 1024.0 * 1024.0;
/// The job's memory limit.
const JOB_LIMIT: u64 = 64 << 20;
/// Every hierarchy the daemon reads: on a pure v2 machine all of these are the one tree.
const JOB_CONTROLLERS: [&str; 5] = ["memory", "cpuacct", "pids", "blkio", ""];

/// The kernel's major and minor version.
fn kernel() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn platform() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    format!("Linux {}, cgroup {:?}", release.trim(), cgroups::mode())
}

/// Where the memory peak of a container whose memory is its cgroup's comes from: the kernel's
/// (v1 memory.max_usage_in_bytes, v2 memory.peak from 5.19 on) or the daemon's samples.
fn expected_peak_source() -> &'static str {
    if cgroups::is_v2("memory") && kernel() < (5, 19) {
        "sampled"
    } else {
        "kernel"
    }
}

/// The `label` of `container`'s `apptheus_container_info` (or `_job_info`) series.
fn info_label(metrics: &str, series: &str, container: &str, label: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{series}{{")) && l.contains(container))
        .and_then(|l| l.split(&format!("{label}=\"")).nth(1))
        .and_then(|r| r.split('"').next())
        .map(str::to_owned)
}

/// A launcher started inside `job` (in every hierarchy of it): apptheus-exec running the
/// workload with `steps`.
fn launch_in(job: &TestCgroup, d: &Daemon, steps: &[&str]) -> Workload {
    let script = format!(
        "{}exec {} --socket={} -- {} {}",
        job.enter_script(),
        bin("apptheus-exec").display(),
        d.socket.display(),
        workload_bin().display(),
        steps.join(" ")
    );
    Workload::spawn_cmd(Command::new("sh").args(["-c", &script]))
}

/// What the tests leave of a job's cgroup: its type and enabled controllers (v2; the unified
/// tree of a hybrid host), and its child directories.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    cgroup_type: String,
    subtree_control: String,
    children: Vec<String>,
}

fn shape(dir: &Path) -> Shape {
    let mut children: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    children.sort();
    Shape {
        cgroup_type: cgroups::read(dir, "cgroup.type"),
        subtree_control: cgroups::read(dir, "cgroup.subtree_control"),
        children,
    }
}

/// The job's directory in the unified tree (the only one on pure v2), where one is mounted.
fn unified_dir(job: &TestCgroup) -> Option<std::path::PathBuf> {
    cgroups::unified().map(|_| job.dir(""))
}

/// Every process of the launcher's tree is in cgroup `want` of every hierarchy the daemon
/// reads: none left outside.
fn assert_all_inside(launcher: i32, want: &str) {
    let tree: Vec<i32> = std::iter::once(launcher)
        .chain(descendants(launcher))
        .collect();
    for pid in tree {
        for h in JOB_CONTROLLERS {
            assert_eq!(
                cgroup_of(pid, h).as_deref(),
                Some(want),
                "pid {pid} ({h:?}) is outside the container's cgroup"
            );
        }
    }
}

/// The launcher's job cgroup holds nothing but the launcher (a Slurm task cgroup): it is the
/// container's cgroup as it is. CPU, memory, its peak and the job's limit are measured there;
/// an allocation over the limit is killed by the kernel (the job's OOM, as its batch system
/// sees it); and after the daemon stops, the job's cgroup is as it was.
#[test]
fn exclusive_job_leaf_is_the_containers_cgroup() {
    let job = TestCgroup::new("apptheus-field-job", &JOB_CONTROLLERS);
    job.limit_memory(JOB_LIMIT);
    let before = unified_dir(&job).map(|d| shape(&d));
    let mut d = Daemon::start(&["--monitor.interval=200ms"]);
    let mut w = launch_in(
        &job,
        &d,
        &[
            "ready",
            "wait",
            "forks:3",
            "burn:1.2",
            "ready",
            "wait",
            "alloc:40",
            "ready",
            "wait",
            "alloc:200",
            "ready",
            "wait",
        ],
    );
    w.ready();
    let label = format!("container=\"apptheus-exec_{}\"", w.pid());
    let m = d.metrics_showing(&label);
    let info = |m: &str, l: &str| info_label(m, "apptheus_container_info", &label, l);
    assert_eq!(
        info(&m, "cgroup").as_deref(),
        Some(job.rel().as_str()),
        "the job's leaf is not the container's cgroup"
    );
    assert_eq!(info(&m, "memory_source").as_deref(), Some("cgroup"));
    assert_all_inside(w.pid(), &job.rel());

    // CPU: a 1.2 s loop.
    w.go();
    w.ready();
    let cpu = eventually(Duration::from_secs(10), || {
        sample(
            &d.metrics(),
            "apptheus_container_cpu_usage_seconds_total",
            &label,
        )
        .filter(|&c| c >= 0.8)
    })
    .unwrap_or_else(|| panic!("CPU never reached 0.8 s:\n{}", d.metrics()));

    // Memory: 40 MiB, its peak and the job's limit.
    w.go();
    assert_eq!(w.line(), "alloc ok");
    w.ready();
    let peak_source = expected_peak_source();
    if cgroups::is_v2("memory") {
        assert_eq!(
            job.dir("memory").join("memory.peak").exists(),
            kernel() >= (5, 19),
            "memory.peak is there from Linux 5.19 on"
        );
    }
    // A pass that read the files while the pages were being touched (slow in a TCG guest) has
    // a usage below the peak it read a moment later: wait for a pass after the allocation.
    let m = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        let peak = sample(&m, "apptheus_container_memory_max_usage_bytes", &label)?;
        let usage = sample(&m, "apptheus_container_memory_usage_bytes", &label)?;
        (peak >= 30.0 * MIB
            && usage >= 30.0 * MIB
            && info(&m, "memory_peak_source").as_deref() == Some(peak_source))
        .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "no usage and peak >= 30 MiB with memory_peak_source=\"{peak_source}\":\n{}",
            d.metrics()
        )
    });
    let peak = sample(&m, "apptheus_container_memory_max_usage_bytes", &label).unwrap();
    let usage = sample(&m, "apptheus_container_memory_usage_bytes", &label).unwrap();
    assert!(usage >= 30.0 * MIB, "usage {usage}");
    let limit = sample(&m, "apptheus_container_spec_memory_limit_bytes", &label);
    assert_eq!(limit, Some(JOB_LIMIT as f64), "the job's limit");
    assert!(peak <= JOB_LIMIT as f64, "peak {peak} over the limit");
    assert!(sample(&m, "apptheus_container_pids", &label).unwrap() >= 1.0);
    assert_eq!(
        sample(&m, "apptheus_container_forks_total", &label),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, "apptheus_container_processes", &label),
        Some(1.0),
        "the workload (apptheus-exec waits outside the container)"
    );
    // The block I/O series exist (the guests have no block device to count on).
    assert!(sample(&m, "apptheus_container_blkio_read_bytes_total", &label).is_some());
    assert_all_inside(w.pid(), &job.rel());

    // 200 MiB more under 64 MiB: the kernel's OOM killer, charged to the job.
    w.go();
    let status = w.wait();
    assert_eq!(
        status.code(),
        Some(137),
        "the 200 MiB allocation was not OOM-killed"
    );
    let oom_kills = if cgroups::is_v2("memory") {
        cgroups::read(&job.dir("memory"), "memory.events")
    } else {
        cgroups::read(&job.dir("memory"), "memory.oom_control")
    };
    assert!(
        oom_kills
            .lines()
            .any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n != "0")),
        "no OOM kill counted in the job's cgroup: {oom_kills}"
    );
    println!(
        "{}: nested, exclusive leaf: CPU {cpu:.2} s, peak {:.1} MiB ({peak_source}), limit {:.0} MiB, 200 MiB allocation exit {:?}",
        platform(),
        peak / MIB,
        JOB_LIMIT as f64 / MIB,
        status.code()
    );

    // The container ended; with the daemon stopped, the job's cgroup is as it was.
    eventually(Duration::from_secs(10), || {
        sample(&d.metrics(), "apptheus_container_end_time_seconds", &label)
    })
    .unwrap_or_else(|| panic!("the container never ended:\n{}", d.metrics()));
    assert!(d.stop().success());
    let after = unified_dir(&job).map(|d| shape(&d));
    assert_eq!(after, before, "the job's cgroup was changed");
    for dir in job.dirs() {
        assert_eq!(
            shape(dir).children,
            Vec::<String>::new(),
            "{}",
            dir.display()
        );
    }
}

/// The launcher's job cgroup also holds a foreign process (a batch script's shell): the
/// container gets a cgroup inside it, its processes are moved there and the foreign one stays.
/// On v2 that child cannot get a memory controller (the job holds processes): memory then comes
/// from the processes (`memory_source="processes"`), under the job's limit still.
#[test]
fn shared_job_leaf_gives_the_container_a_cgroup_inside_it() {
    let job = TestCgroup::new("apptheus-field-shared", &JOB_CONTROLLERS);
    job.limit_memory(JOB_LIMIT);
    let mut foreign = Workload::spawn_cmd(
        Command::new("sh").args(["-c", &format!("{}exec sleep 600", job.enter_script())]),
    );
    let memory_dir = job.dir("memory");
    eventually(Duration::from_secs(10), || {
        cgroups::procs(&memory_dir)
            .contains(&foreign.pid())
            .then_some(())
    })
    .expect("the foreign process never entered the job's cgroup");
    let before = unified_dir(&job).map(|d| shape(&d));
    let mut d = Daemon::start(&["--monitor.interval=200ms"]);
    let mut w = launch_in(
        &job,
        &d,
        &[
            "ready", "wait", "forks:2", "burn:1.2", "alloc:16", "ready", "wait",
        ],
    );
    w.ready();
    let label = format!("container=\"apptheus-exec_{}\"", w.pid());
    let m = d.metrics_showing(&label);
    let info = |m: &str, l: &str| info_label(m, "apptheus_container_info", &label, l);
    let cg = info(&m, "cgroup").unwrap();
    let own = format!("{}/{}/apptheus-exec_{}", job.rel(), d.parent, w.pid());
    assert_eq!(cg, own, "not a cgroup inside the job's");
    assert_all_inside(w.pid(), &own);
    for h in JOB_CONTROLLERS {
        assert_eq!(
            cgroup_of(foreign.pid(), h).as_deref(),
            Some(job.rel().as_str()),
            "the foreign process was moved ({h:?})"
        );
    }
    // v2: no controller below a cgroup that holds processes; v1 hierarchies have no such rule.
    let memory_source = if cgroups::is_v2("memory") {
        "processes"
    } else {
        "cgroup"
    };
    assert_eq!(info(&m, "memory_source").as_deref(), Some(memory_source));

    w.go();
    assert_eq!(w.line(), "alloc ok");
    w.ready();
    let m = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        let cpu = sample(&m, "apptheus_container_cpu_usage_seconds_total", &label)?;
        let mem = sample(&m, "apptheus_container_memory_usage_bytes", &label)?;
        (cpu >= 0.8 && mem >= 16.0 * MIB).then_some(m)
    })
    .unwrap_or_else(|| panic!("CPU never reached 0.8 s or memory 16 MiB:\n{}", d.metrics()));
    let cpu = sample(&m, "apptheus_container_cpu_usage_seconds_total", &label).unwrap();
    let mem = sample(&m, "apptheus_container_memory_usage_bytes", &label).unwrap();
    let peak = sample(&m, "apptheus_container_memory_max_usage_bytes", &label).unwrap();
    let peak_source = info(&m, "memory_peak_source").unwrap();
    let limit = sample(&m, "apptheus_container_spec_memory_limit_bytes", &label);
    assert_eq!(limit, Some(JOB_LIMIT as f64), "the job's limit holds it");
    assert!(peak >= 16.0 * MIB, "peak {peak}");
    let want_peak = if memory_source == "processes" {
        "sampled"
    } else {
        expected_peak_source()
    };
    assert_eq!(peak_source, want_peak);
    assert_eq!(
        sample(&m, "apptheus_container_processes", &label),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "apptheus_container_forks_total", &label),
        Some(2.0)
    );
    assert!(sample(&m, "apptheus_container_pids", &label).unwrap() >= 1.0);
    // Block I/O: only where the container has an io (blkio) controller.
    let io = sample(&m, "apptheus_container_blkio_read_bytes_total", &label);
    assert_eq!(io.is_some(), memory_source == "cgroup", "io {io:?}");
    println!(
        "{}: nested, shared leaf: CPU {cpu:.2} s, memory {:.1} MiB ({memory_source}), peak {:.1} MiB ({peak_source}), limit {:.0} MiB",
        platform(),
        mem / MIB,
        peak / MIB,
        JOB_LIMIT as f64 / MIB
    );

    w.go();
    assert!(w.wait().success());
    // The container's own directories go at its end; the job's cgroup is as it was.
    let dirs: Vec<_> = job.dirs().to_vec();
    eventually(Duration::from_secs(10), || {
        dirs.iter()
            .all(|dir| shape(dir).children.is_empty())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the container's directories were left:\n{}", d.log_text()));
    assert!(d.stop().success());
    let after = unified_dir(&job).map(|d| shape(&d));
    assert_eq!(after, before, "the job's cgroup was changed");
    assert_eq!(cgroups::procs(&memory_dir), vec![foreign.pid()]);
    foreign.child.kill().unwrap();
    foreign.child.wait().unwrap();
}

/// `--cgroup.placement=dedicated`: the container's cgroup is under each hierarchy's root, out of
/// its job: every controller, no job limit.
#[test]
fn dedicated_placement_takes_the_container_out_of_the_job() {
    let job = TestCgroup::new("apptheus-field-dedicated", &JOB_CONTROLLERS);
    job.limit_memory(JOB_LIMIT);
    let d = Daemon::start(&["--monitor.interval=200ms", "--cgroup.placement=dedicated"]);
    let mut w = launch_in(
        &job,
        &d,
        &[
            "ready", "wait", "forks:2", "burn:1.2", "alloc:96", "ready", "wait",
        ],
    );
    w.ready();
    let label = format!("container=\"apptheus-exec_{}\"", w.pid());
    let m = d.metrics_showing(&label);
    let info = |m: &str, l: &str| info_label(m, "apptheus_container_info", &label, l);
    let own = format!("/{}/apptheus-exec_{}", d.parent, w.pid());
    assert_eq!(info(&m, "cgroup").as_deref(), Some(own.as_str()));
    assert_all_inside(w.pid(), &own);
    assert_eq!(info(&m, "memory_source").as_deref(), Some("cgroup"));
    w.go();
    // Out of the job's 64 MiB: 96 MiB is allowed.
    assert_eq!(w.line(), "alloc ok");
    w.ready();
    let peak_source = expected_peak_source();
    let m = eventually(Duration::from_secs(10), || {
        let m = d.metrics();
        let cpu = sample(&m, "apptheus_container_cpu_usage_seconds_total", &label)?;
        let peak = sample(&m, "apptheus_container_memory_max_usage_bytes", &label)?;
        (cpu >= 0.8 && peak >= 90.0 * MIB).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "CPU never reached 0.8 s or the peak 90 MiB:\n{}",
            d.metrics()
        )
    });
    let cpu = sample(&m, "apptheus_container_cpu_usage_seconds_total", &label).unwrap();
    let peak = sample(&m, "apptheus_container_memory_max_usage_bytes", &label).unwrap();
    assert_eq!(info(&m, "memory_peak_source").as_deref(), Some(peak_source));
    assert_eq!(
        sample(&m, "apptheus_container_spec_memory_limit_bytes", &label),
        None,
        "no limit above the root"
    );
    assert!(sample(&m, "apptheus_container_pids", &label).unwrap() >= 1.0);
    assert!(sample(&m, "apptheus_container_blkio_read_bytes_total", &label).is_some());
    assert_eq!(
        sample(&m, "apptheus_container_processes", &label),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "apptheus_container_forks_total", &label),
        Some(2.0)
    );
    println!(
        "{}: dedicated: CPU {cpu:.2} s, peak {:.1} MiB ({peak_source}), no limit",
        platform(),
        peak / MIB
    );
    w.go();
    assert!(w.wait().success());
    eventually(Duration::from_secs(10), || {
        d.cgroup_dirs().is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("directories left: {:?}", d.cgroup_dirs()));
    if cgroups::mode() == Mode::V2 {
        // Nothing was made in the job's cgroup either.
        assert_eq!(shape(&job.dir("")).children, Vec::<String>::new());
    }
}
