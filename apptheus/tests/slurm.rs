//! apptheus under a real Slurm (22.05, Debian's packages): a private single-node cluster per test
//! (tests/common/slurm.rs), with cgroup/v1 on v1 and hybrid hosts and cgroup/v2 on pure-v2 ones.
//!
//! The `baseline_*` tests record how Slurm's own cgroups behave without apptheus (the facts in
//! docs/notes/slurm-cgroups.md); the `apptheus_*` tests hold the daemon to the same behaviour
//! with `apptheus-exec` inside a job step: Slurm still sees the job's OOM kill, Slurm can still
//! remove every cgroup of the job when it ends, and the daemon still measures the job.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use common::{
    Daemon, bin, cgroup_of,
    cgroups::{self, TestCgroup},
    eventually, sample,
    slurm::{Layout, Slurm},
    workload_bin,
};

/// How long after a job's end its cgroups may still exist (slurmstepd removes them within a
/// few milliseconds; anything left after this is left for good).
const GONE_WITHIN: Duration = Duration::from_secs(10);

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout:\n{}--- stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The cgroup path (relative to its hierarchy) Slurm gives task `task` of `step` of `job`.
fn task_cgroup(slurm: &Slurm, job: u32, step: &str, task: u32) -> String {
    match slurm.layout {
        Layout::V1 => format!(
            "/slurm_{}/uid_0/job_{job}/step_{step}/task_{task}",
            slurm.node
        ),
        Layout::V2 => format!(
            "/system.slice/{}_slurmstepd.scope/job_{job}/step_{step}/user/task_{task}",
            slurm.node
        ),
    }
}

/// The cgroup of slurmstepd for `step` of `job` in the memory hierarchy (v1) or the tree (v2).
fn stepd_cgroup(slurm: &Slurm, job: u32, step: &str) -> String {
    match slurm.layout {
        Layout::V1 => format!("/slurm_{}/uid_0/job_{job}/step_{step}", slurm.node),
        Layout::V2 => format!(
            "/system.slice/{}_slurmstepd.scope/job_{job}/step_{step}/slurm",
            slurm.node
        ),
    }
}

/// The hierarchy the memory controller is in: "memory" on v1, the unified tree ("") on v2.
fn memory_hierarchy(slurm: &Slurm) -> &'static str {
    match slurm.layout {
        Layout::V1 => "memory",
        Layout::V2 => "",
    }
}

fn memory_dir(slurm: &Slurm, rel: &str) -> PathBuf {
    match slurm.layout {
        Layout::V1 => PathBuf::from(format!("/sys/fs/cgroup/memory{rel}")),
        Layout::V2 => PathBuf::from(format!("/sys/fs/cgroup{rel}")),
    }
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Poll for `path` to hold a number (written by a job's script).
fn wait_pid_file(path: &Path, slurm: &Slurm) -> i32 {
    eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "{} not written within 30 s:\n{}",
            path.display(),
            slurm.logs_for_failure()
        )
    })
}

/// A shell script a job runs: it writes its environment to `dir/<name>.env`, then its pid to
/// `dir/<name>.pid` (so that the environment is complete once the pid shows), then waits for
/// `dir/<name>.go`.
fn waiting_script(dir: &Path, name: &str) -> String {
    let d = s(dir);
    format!(
        "env | sort > {d}/{name}.env; echo $$ > {d}/{name}.pid.tmp && mv {d}/{name}.pid.tmp {d}/{name}.pid; \
         while [ ! -e {d}/{name}.go ]; do sleep 0.01; done"
    )
}

/// Time from `since` until `/proc/<pid>` is gone, polled every millisecond.
fn wait_exit(pid: i32, timeout: Duration) -> Option<Instant> {
    let end = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Some(Instant::now())
}

/// An `srun` job step: the task's cgroups in every hierarchy, slurmstepd's cgroup and who is in
/// task_0 while it runs; then the cgroups are gone within milliseconds of the task's exit, and
/// slurmd logged no failed rmdir.
#[test]
fn baseline_srun_layout_and_prompt_cgroup_removal() {
    let slurm = Slurm::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = waiting_script(dir.path(), "task");
    let (name, srun) = slurm.spawn_srun(&["--mem=64M", "sh", "-c", &script]);
    let task = wait_pid_file(&dir.path().join("task.pid"), &slurm);
    let job = slurm.job_id(&name).expect("job id of the running srun");

    // The task's cgroups.
    let cgroup = std::fs::read_to_string(format!("/proc/{task}/cgroup")).unwrap_or_default();
    eprintln!("srun task {task} of job {job}: /proc/{task}/cgroup:\n{cgroup}");
    let task_cg = task_cgroup(&slurm, job, "0", 0);
    assert_eq!(
        cgroup_of(task, memory_hierarchy(&slurm)).as_deref(),
        Some(task_cg.as_str()),
        "{cgroup}"
    );
    if slurm.layout == Layout::V1 {
        let step_cg = format!("/slurm_{}/uid_0/job_{job}/step_0", slurm.node);
        // jobacct_gather/cgroup: cpuacct per task; proctrack/cgroup (freezer) and
        // task/cgroup's cpuset per step; nothing in the other hierarchies.
        assert_eq!(
            cgroup_of(task, "cpuacct").as_deref(),
            Some(task_cg.as_str())
        );
        assert_eq!(
            cgroup_of(task, "freezer").as_deref(),
            Some(step_cg.as_str())
        );
        assert_eq!(cgroup_of(task, "cpuset").as_deref(), Some(step_cg.as_str()));
        for h in ["cpu", "pids", "blkio", "devices", ""] {
            assert_eq!(cgroup_of(task, h).as_deref(), Some("/"), "{h}: {cgroup}");
        }
    }

    // slurmstepd is the task's parent, in the step's cgroup (v1: the memory step cgroup, above
    // the tasks; v2: step_0/slurm).
    let stepd = ppid(task).expect("task's parent");
    let stepd_cmd = cmdline(stepd);
    let stepd_text = std::fs::read_to_string(format!("/proc/{stepd}/cgroup")).unwrap_or_default();
    eprintln!("slurmstepd {stepd} ({stepd_cmd}): /proc/{stepd}/cgroup:\n{stepd_text}");
    assert_eq!(stepd_cmd, format!("slurmstepd: [{job}.0]"));
    assert_eq!(
        cgroup_of(stepd, memory_hierarchy(&slurm)).as_deref(),
        Some(stepd_cgroup(&slurm, job, "0").as_str()),
        "{stepd_text}"
    );

    // Who is in task_0: the task and its children only, never slurmstepd.
    let task_dir = memory_dir(&slurm, &task_cg);
    let in_task: Vec<(i32, String)> = procs(&task_dir)
        .into_iter()
        .map(|p| (p, cmdline(p)))
        .collect();
    eprintln!("{}/cgroup.procs: {in_task:?}", task_dir.display());
    assert!(in_task.iter().any(|(p, _)| *p == task), "{in_task:?}");
    assert!(!in_task.iter().any(|(p, _)| *p == stepd), "{in_task:?}");
    assert!(
        in_task
            .iter()
            .all(|(p, _)| *p == task || ppid(*p).is_none_or(|pp| pp == task)),
        "only the task's processes: {in_task:?}"
    );

    // Limits: the job's --mem on job and step (v1: memory.limit_in_bytes and memsw), none on
    // the task.
    let job_cgroups = slurm.job_cgroups(job);
    for d in &job_cgroups {
        let limit = ["memory.limit_in_bytes", "memory.max"]
            .iter()
            .find_map(|f| std::fs::read_to_string(d.join(f)).ok());
        let memsw = ["memory.memsw.limit_in_bytes", "memory.swap.max"]
            .iter()
            .find_map(|f| std::fs::read_to_string(d.join(f)).ok());
        let cpus = std::fs::read_to_string(d.join("cpuset.cpus")).ok();
        eprintln!(
            "{}: memory limit {:?}, memsw/swap {:?}, cpuset.cpus {:?}",
            d.display(),
            limit.map(|l| l.trim().to_string()),
            memsw.map(|l| l.trim().to_string()),
            cpus.map(|l| l.trim().to_string())
        );
    }
    if slurm.layout == Layout::V1 {
        let mem = |rel: &str| {
            std::fs::read_to_string(memory_dir(&slurm, rel).join("memory.limit_in_bytes"))
                .unwrap_or_default()
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        };
        let job_cg = format!("/slurm_{}/uid_0/job_{job}", slurm.node);
        assert_eq!(mem(&job_cg), 64 << 20, "job_{job} memory.limit_in_bytes");
        assert_eq!(mem(&format!("{job_cg}/step_0")), 64 << 20, "step_0");
        assert!(mem(&task_cg) > 1 << 60, "task_0 has no limit of its own");
    } else {
        // cgroup/v2: the job's limit on job_<id> and (redirected from the step) on
        // step_0/user; none on step_0, its slurm leaf, or the task.
        let max = |rel: &str| {
            std::fs::read_to_string(memory_dir(&slurm, rel).join("memory.max"))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let job_cg = format!("/system.slice/{}_slurmstepd.scope/job_{job}", slurm.node);
        let limit = (64u64 << 20).to_string();
        assert_eq!(max(&job_cg), limit, "job_{job} memory.max");
        assert_eq!(max(&format!("{job_cg}/step_0/user")), limit, "step_0/user");
        assert_eq!(max(&format!("{job_cg}/step_0")), "max", "step_0");
        assert_eq!(max(&task_cg), "max", "task_0 has no limit of its own");
    }

    // The environment a task sees.
    let env = std::fs::read_to_string(dir.path().join("task.env")).unwrap_or_default();
    let slurm_env: Vec<&str> = env.lines().filter(|l| l.starts_with("SLURM")).collect();
    eprintln!("task environment:\n{}", slurm_env.join("\n"));
    for want in [
        format!("SLURM_JOB_ID={job}"),
        format!("SLURM_JOBID={job}"),
        "SLURM_STEP_ID=0".to_string(),
        "SLURM_PROCID=0".to_string(),
        "SLURM_LOCALID=0".to_string(),
        "SLURM_JOB_PARTITION=test".to_string(),
        "SLURM_JOB_USER=root".to_string(),
        "SLURM_JOB_UID=0".to_string(),
        format!("SLURM_JOB_NAME={name}"),
        format!("SLURMD_NODENAME={}", slurm.node),
        format!("SLURM_CLUSTER_NAME=c{}", slurm.node),
        format!("SLURM_TASK_PID={task}"),
    ] {
        assert!(
            slurm_env.contains(&want.as_str()),
            "{want} not in {slurm_env:?}"
        );
    }
    // accounting_storage/none: no account.
    assert!(!env.contains("SLURM_JOB_ACCOUNT="), "{slurm_env:?}");

    // Release the task: its cgroups go right after it exits.
    std::fs::write(dir.path().join("task.go"), "").expect("go");
    let exited = wait_exit(task, Duration::from_secs(10)).expect("task exits");
    let gone = eventually_gone(&slurm, job);
    let out = srun.wait_with_output().expect("srun");
    assert!(out.status.success(), "{}", text(&out));
    let gone = gone.unwrap_or_else(|left| panic!("cgroups of job {job} left: {left:?}"));
    eprintln!(
        "job {job}: cgroups gone {:.1} ms after the task exited",
        gone.duration_since(exited).as_secs_f64() * 1000.0
    );
    assert!(gone.duration_since(exited) < GONE_WITHIN);
    assert_eq!(slurm.rmdir_failures(job), Vec::<String>::new());
}

/// Poll (every millisecond) until no cgroup of `job` is left: when, or what is left after
/// GONE_WITHIN.
fn eventually_gone(slurm: &Slurm, job: u32) -> Result<Instant, Vec<PathBuf>> {
    let end = Instant::now() + GONE_WITHIN;
    loop {
        let left = slurm.job_cgroups(job);
        if left.is_empty() {
            return Ok(Instant::now());
        }
        if Instant::now() > end {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An `sbatch` script that runs CMD: the batch shell and CMD share step_batch/task_0; an `srun`
/// inside it makes step_0 beside it.
#[test]
fn baseline_sbatch_layout() {
    let slurm = Slurm::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = s(dir.path());
    let script = dir.path().join("job.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ > {d}/shell.pid\nsh -c '{}'\nsrun sh -c '{}'\n",
            waiting_script(dir.path(), "cmd"),
            waiting_script(dir.path(), "step")
        ),
    )
    .expect("script");
    let job = slurm.sbatch(&script, &["--mem=64M", &format!("--output={d}/out")]);
    let shell = wait_pid_file(&dir.path().join("shell.pid"), &slurm);
    let cmd = wait_pid_file(&dir.path().join("cmd.pid"), &slurm);
    let batch_task = task_cgroup(&slurm, job, "batch", 0);
    let mem = memory_hierarchy(&slurm);
    eprintln!(
        "batch shell {shell} ({}):\n{}",
        cmdline(shell),
        std::fs::read_to_string(format!("/proc/{shell}/cgroup")).unwrap_or_default()
    );
    assert_eq!(cgroup_of(shell, mem).as_deref(), Some(batch_task.as_str()));
    assert_eq!(cgroup_of(cmd, mem).as_deref(), Some(batch_task.as_str()));
    let stepd = ppid(shell).expect("shell's parent");
    assert_eq!(cmdline(stepd), format!("slurmstepd: [{job}.batch]"));
    assert_eq!(
        cgroup_of(stepd, mem).as_deref(),
        Some(stepd_cgroup(&slurm, job, "batch").as_str())
    );
    let in_task: Vec<(i32, String)> = procs(&memory_dir(&slurm, &batch_task))
        .into_iter()
        .map(|p| (p, cmdline(p)))
        .collect();
    eprintln!("step_batch/task_0 while CMD runs: {in_task:?}");
    assert!(in_task.iter().any(|(p, _)| *p == shell) && in_task.iter().any(|(p, _)| *p == cmd));
    let env = std::fs::read_to_string(dir.path().join("cmd.env")).unwrap_or_default();
    eprintln!(
        "batch CMD environment:\n{}",
        env.lines()
            .filter(|l| l.starts_with("SLURM"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(env.contains(&format!("SLURM_JOB_ID={job}\n")), "{env}");

    // The script's srun: a step_0 beside step_batch; the srun client stays in the batch task.
    std::fs::write(dir.path().join("cmd.go"), "").expect("go");
    let step_task = wait_pid_file(&dir.path().join("step.pid"), &slurm);
    assert_eq!(
        cgroup_of(step_task, mem).as_deref(),
        Some(task_cgroup(&slurm, job, "0", 0).as_str())
    );
    let in_batch: Vec<(i32, String)> = procs(&memory_dir(&slurm, &batch_task))
        .into_iter()
        .map(|p| (p, cmdline(p)))
        .collect();
    eprintln!("step_batch/task_0 while the script's srun runs: {in_batch:?}");
    assert!(
        in_batch.iter().any(|(_, c)| c.starts_with("srun ")),
        "{in_batch:?}"
    );
    eprintln!("job {job}'s cgroups: {:#?}", slurm.job_cgroups(job));
    std::fs::write(dir.path().join("step.go"), "").expect("go");

    let gone = slurm.wait_job_gone(job, Duration::from_secs(30));
    let state = slurm.job_state(job);
    assert!(gone.is_ok(), "job {job} ({state:?}) left {gone:?}");
    assert_eq!(state.as_deref(), Some("COMPLETED"));
    assert_eq!(slurm.rmdir_failures(job), Vec::<String>::new());
}

/// With `PrologFlags=Contain` (what pam_slurm_adopt sites use) every job also has an extern
/// step: `step_extern/task_0` holds its `sleep 100000000`, its slurmstepd `[<job>.extern]` sits
/// in `step_extern`, and everything goes when the job ends.
#[test]
fn baseline_extern_step_with_prolog_contain() {
    let slurm = Slurm::start_with("PrologFlags=Contain");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = waiting_script(dir.path(), "task");
    let (name, srun) = slurm.spawn_srun(&["--mem=64M", "sh", "-c", &script]);
    let task = wait_pid_file(&dir.path().join("task.pid"), &slurm);
    let job = slurm.job_id(&name).expect("job id of the running srun");
    let mem = memory_hierarchy(&slurm);
    assert_eq!(
        cgroup_of(task, mem).as_deref(),
        Some(task_cgroup(&slurm, job, "0", 0).as_str())
    );
    let extern_task = memory_dir(&slurm, &task_cgroup(&slurm, job, "extern", 0));
    let in_extern: Vec<(i32, String)> = procs(&extern_task)
        .into_iter()
        .map(|p| (p, cmdline(p)))
        .collect();
    eprintln!("{}: {in_extern:?}", extern_task.display());
    assert!(
        in_extern.iter().any(|(_, c)| c == "sleep 100000000"),
        "{in_extern:?}"
    );
    let sleeper = in_extern[0].0;
    let stepd = ppid(sleeper).expect("sleeper's parent");
    assert_eq!(cmdline(stepd), format!("slurmstepd: [{job}.extern]"));
    assert_eq!(
        cgroup_of(stepd, mem).as_deref(),
        Some(stepd_cgroup(&slurm, job, "extern").as_str())
    );
    eprintln!("job {job}'s cgroups: {:#?}", slurm.job_cgroups(job));
    std::fs::write(dir.path().join("task.go"), "").expect("go");
    let out = srun.wait_with_output().expect("srun");
    assert!(out.status.success(), "{}", text(&out));
    let gone = slurm.wait_job_gone(job, GONE_WITHIN);
    assert!(gone.is_ok(), "job {job} left {gone:?}");
    eprintln!("cgroups gone {gone:?} after srun returned");
    assert_eq!(slurm.rmdir_failures(job), Vec::<String>::new());
}

/// What srun prints for a step killed by the cgroup OOM killer, and its exit code.
const OOM_TASK: &str = "task 0: Out Of Memory";

fn oom_event(job: u32) -> String {
    format!("Detected 1 oom-kill event(s) in StepId={job}.0")
}

#[test]
fn baseline_srun_oom_is_reported_and_cgroups_go() {
    let slurm = Slurm::start();
    let w = s(&workload_bin());
    let (job, out) = slurm.srun_job(&["--mem=64M", &w, "alloc:200"]);
    eprintln!(
        "srun --mem=64M workload alloc:200 (job {job}):\n{}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(OOM_TASK), "{}", text(&out));
    assert!(err.contains(&oom_event(job)), "{}", text(&out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(slurm.job_state(job).as_deref(), Some("OUT_OF_MEMORY"));
    let gone = slurm.wait_job_gone(job, GONE_WITHIN);
    assert!(gone.is_ok(), "job {job} left {gone:?}");
    eprintln!("cgroups gone {gone:?} after srun returned");
    assert_eq!(slurm.rmdir_failures(job), Vec::<String>::new());
    assert!(
        slurm
            .slurmd_log()
            .contains(&format!("error: {}", oom_event(job))),
        "{}",
        slurm.slurmd_log()
    );
}

#[test]
fn baseline_srun_cpu_job_succeeds_and_cgroups_go() {
    let slurm = Slurm::start();
    let w = s(&workload_bin());
    let (job, out) = slurm.srun_job(&[&w, "burn:1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(slurm.job_state(job).as_deref(), Some("COMPLETED"));
    let gone = slurm.wait_job_gone(job, GONE_WITHIN);
    assert!(gone.is_ok(), "job {job} left {gone:?}");
    assert_eq!(slurm.rmdir_failures(job), Vec::<String>::new());
}

/// `srun [ARGS] apptheus-exec --socket=<the daemon's> -- CMD...`.
fn srun_exec(slurm: &Slurm, d: &Daemon, args: &[&str], cmd: &[&str]) -> (u32, Output) {
    let exec = s(&bin("apptheus-exec"));
    let socket = format!("--socket={}", d.socket.display());
    let mut all: Vec<&str> = args.to_vec();
    all.extend([exec.as_str(), socket.as_str(), "--"]);
    all.extend_from_slice(cmd);
    slurm.srun_job(&all)
}

/// The one container of `d` (its `container="..."` label) once it is in /metrics.
fn the_container(d: &Daemon) -> Option<String> {
    let m = d.metrics();
    m.lines()
        .find(|l| l.starts_with("apptheus_container_info{"))
        .and_then(|l| l.split("container=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .map(|c| format!("container=\"{c}\""))
}

/// Everything the other engineer needs when an apptheus test fails: the problems, srun's
/// output, the job's cgroups left, slurmd's cgroup lines for the job and the daemon's log.
fn report(problems: &[String], slurm: &Slurm, d: &Daemon, job: u32, out: &Output) -> String {
    let job_lines: Vec<String> = slurm
        .slurmd_log()
        .lines()
        .filter(|l| l.contains(&format!("[{job}.")) && (l.contains("CGROUP") || l.contains("oom")))
        .map(str::to_owned)
        .collect();
    // Where the kernel counted OOM kills (v1: memory.oom_control counts its own cgroup's only).
    let oom_kills: Vec<String> = slurm
        .job_cgroups(job)
        .iter()
        .filter_map(|d| {
            let t = std::fs::read_to_string(d.join("memory.oom_control"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.events")))
                .ok()?;
            let n = t.lines().find_map(|l| l.strip_prefix("oom_kill "))?;
            Some(format!("{}: oom_kill {n}", d.display()))
        })
        .collect();
    format!(
        "{} problem(s):\n- {}\n\nsrun (job {job}): {}\ncgroups of job {job} now: {:#?}\noom_kill counts there:\n{}\n\nslurmd, job {job}'s cgroup lines:\n{}\n\napptheus log:\n{}",
        problems.len(),
        problems.join("\n- "),
        text(out),
        slurm.job_cgroups(job),
        oom_kills.join("\n"),
        job_lines.join("\n"),
        d.log_text()
            .lines()
            .filter(|l| !l.contains("source=aya"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The job's cgroups after its end: gone within GONE_WITHIN, and no failed rmdir in slurmd's log.
fn check_cleanup(slurm: &Slurm, job: u32, problems: &mut Vec<String>) {
    match slurm.wait_job_gone(job, GONE_WITHIN) {
        Ok(gone) => eprintln!(
            "job {job}: no cgroup of it left {:.0} ms after its end",
            gone.as_secs_f64() * 1000.0
        ),
        Err(left) => problems.push(format!(
            "{} cgroup directories of job {job} left {GONE_WITHIN:?} after its end, e.g. {:?}",
            left.len(),
            left.iter().rev().take(3).collect::<Vec<_>>()
        )),
    }
    // What slurmstepd logged about the job's cgroups as they went (DebugFlags=CGroup).
    let teardown: Vec<String> = slurm
        .slurmd_log()
        .lines()
        .filter(|l| l.contains(&format!("[{job}.")) && l.contains("CGROUP"))
        .filter(|l| {
            ["rmdir", "delete", "remove", "oom", "Detected"]
                .iter()
                .any(|k| l.contains(k))
        })
        .map(str::to_owned)
        .collect();
    eprintln!(
        "slurmd's log, job {job}'s cgroup teardown:\n{}",
        teardown.join("\n")
    );
    let failures = slurm.rmdir_failures(job);
    if !failures.is_empty() {
        problems.push(format!(
            "slurmd logged {} failed rmdir(s) for job {job}, first: {}",
            failures.len(),
            failures[0]
        ));
    }
}

/// The OOM kill of a container inside a job is still the job's OOM for Slurm (v1 counts
/// `oom_kill` in task_0's and step_0's own `memory.oom_control` only, not in their children),
/// and nothing of the container keeps slurmstepd from removing the job's cgroups.
#[test]
fn apptheus_exec_in_srun_oom_is_reported_and_cgroups_go() {
    let slurm = Slurm::start();
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let w = s(&workload_bin());
    let (job, out) = srun_exec(&slurm, &d, &["--mem=64M"], &[&w, "alloc:200"]);
    eprintln!(
        "srun --mem=64M apptheus-exec -- workload alloc:200 (job {job}):\n{}",
        text(&out)
    );
    let mut problems = Vec::new();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.contains(OOM_TASK) || !err.contains(&oom_event(job)) {
        problems.push(format!(
            "Slurm did not report the OOM kill: srun's stderr has no {OOM_TASK:?} / {:?} (exit {:?})",
            oom_event(job),
            out.status.code()
        ));
    }
    let state = slurm.job_state(job);
    if state.as_deref() != Some("OUT_OF_MEMORY") {
        problems.push(format!("job state {state:?}, not OUT_OF_MEMORY"));
    }
    check_cleanup(&slurm, job, &mut problems);
    assert!(
        problems.is_empty(),
        "{}",
        report(&problems, &slurm, &d, job, &out)
    );
}

/// A 1 s CPU burner under apptheus-exec in an srun step is measured (CPU >= 0.8 s); the task
/// cgroup, which holds nothing but the container, is the container's cgroup as Slurm made it;
/// the job is named by the cgroup (`job_info` with `job_source="cgroup"`), and the job's
/// cgroups all go at its end.
#[test]
fn apptheus_exec_in_srun_cpu_is_measured_and_cgroups_go() {
    let slurm = Slurm::start();
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let w = s(&workload_bin());
    let (job, out) = srun_exec(&slurm, &d, &[], &[&w, "burn:1"]);
    let mut problems = Vec::new();
    if !out.status.success() {
        problems.push(format!("srun failed: exit {:?}", out.status.code()));
    }
    let label = eventually(Duration::from_secs(3), || the_container(&d));
    match &label {
        None => problems.push("no container in the daemon's /metrics".to_string()),
        Some(label) => {
            let cpu = eventually(Duration::from_secs(3), || {
                sample(
                    &d.metrics(),
                    "apptheus_container_cpu_usage_seconds_total",
                    label,
                )
                .filter(|&c| c >= 0.8)
            });
            if cpu.is_none() {
                problems.push(format!(
                    "{label}: CPU {:?} s, not >= 0.8 s for a 1 s burner",
                    sample(
                        &d.metrics(),
                        "apptheus_container_cpu_usage_seconds_total",
                        label
                    )
                ));
            }
            let m = d.metrics();
            let info = m
                .lines()
                .find(|l| l.starts_with("apptheus_container_info{") && l.contains(label.as_str()))
                .unwrap_or_default()
                .to_string();
            let task = format!("cgroup=\"{}\"", task_cgroup(&slurm, job, "0", 0));
            if !info.contains(&task) {
                problems.push(format!(
                    "the container's cgroup is not the job's task_0 ({task}): {info}"
                ));
            }
            let job_info = m
                .lines()
                .find(|l| {
                    l.starts_with("apptheus_container_job_info{") && l.contains(label.as_str())
                })
                .unwrap_or_default()
                .to_string();
            let want = format!("scheduler=\"slurm\",job_id=\"{job}\",job_source=\"cgroup\"");
            if !job_info.contains(&want) {
                problems.push(format!("the job is not named ({want}): {job_info}"));
            }
            let cpu = sample(&m, "apptheus_container_cpu_usage_seconds_total", label);
            eprintln!(
                "srun apptheus-exec -- workload burn:1 (job {job}): CPU {cpu:?} s\n{info}\n{job_info}"
            );
        }
    }
    check_cleanup(&slurm, job, &mut problems);
    assert!(
        problems.is_empty(),
        "{}",
        report(&problems, &slurm, &d, job, &out)
    );
}

/// `apptheus-exec -- CMD` in a batch script, as README shows it. The batch shell and the
/// container share the batch step's task cgroup (a shared leaf), so the container gets a cgroup
/// inside it; that cgroup must be gone when slurmstepd removes the job's after the script exits,
/// or Slurm's rmdir fails once and for all. The script goes on for 2 s after apptheus-exec (a job
/// that does more after its container). A script that ends right after it races the daemon:
/// both react to the same exit, and slurmstepd's rmdir comes a few ms later; the daemon loses
/// that race when it is starved (docs/platforms.md, "Supported platforms"; docs/notes/slurm-cgroups.md).
/// CMD burns once it is in the container's cgroup: what a process used before its move stays with
/// the cgroup it was in (docs/platforms.md), and admission takes a few hundred ms in a slow guest.
#[test]
fn apptheus_exec_in_a_batch_script_is_measured_and_cgroups_go() {
    let slurm = Slurm::start();
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("job.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{} --socket={} -- {} in-cgroup:/{}/ burn:1\necho apptheus-exec exit $?\nsleep 2\n",
            s(&bin("apptheus-exec")),
            d.socket.display(),
            s(&workload_bin()),
            d.parent
        ),
    )
    .expect("script");
    let output = dir.path().join("out");
    let job = slurm.sbatch(&script, &["--mem=64M", &format!("--output={}", s(&output))]);
    let ended = eventually(Duration::from_secs(60), || {
        slurm
            .job_state(job)
            .filter(|st| !["PENDING", "CONFIGURING", "RUNNING"].contains(&st.as_str()))
    });
    let out = Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(0),
        stdout: std::fs::read(&output).unwrap_or_default(),
        stderr: Vec::new(),
    };
    let mut problems = Vec::new();
    match ended.as_deref() {
        Some("COMPLETED") | Some("COMPLETING") => {}
        other => problems.push(format!("job state {other:?}, not COMPLETED")),
    }
    check_cleanup(&slurm, job, &mut problems);
    let label = eventually(Duration::from_secs(3), || the_container(&d));
    match &label {
        None => problems.push("no container in the daemon's /metrics".to_string()),
        Some(label) => {
            let m = d.metrics();
            let cpu = sample(&m, "apptheus_container_cpu_usage_seconds_total", label);
            if cpu.is_none_or(|c| c < 0.8) {
                problems.push(format!("{label}: CPU {cpu:?} s, not >= 0.8 s"));
            }
            let line = |series: &str| {
                m.lines()
                    .find(|l| l.starts_with(series) && l.contains(label.as_str()))
                    .unwrap_or_default()
                    .to_string()
            };
            let (info, job_info) = (
                line("apptheus_container_info{"),
                line("apptheus_container_job_info{"),
            );
            let inside = format!(
                "cgroup=\"{}/{}/",
                task_cgroup(&slurm, job, "batch", 0),
                d.parent
            );
            if !info.contains(&inside) {
                problems.push(format!(
                    "the container's cgroup is not inside the batch task's ({inside}): {info}"
                ));
            }
            let want = format!("scheduler=\"slurm\",job_id=\"{job}\",job_source=\"cgroup\"");
            if !job_info.contains(&want) {
                problems.push(format!("the job is not named ({want}): {job_info}"));
            }
            eprintln!(
                "sbatch job {job} running apptheus-exec -- workload burn:1: CPU {cpu:?} s\n{info}\n{job_info}"
            );
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        report(&problems, &slurm, &d, job, &out)
    );
}

/// The apptheus daemon starved of CPU: its process moved into a cgroup of the test's whose CFS
/// quota is `quota_us` per 100 ms period; moved back to the cgroup it came from, and the test's
/// cgroup removed, when this is dropped (a failed test too).
struct Starved {
    pid: i32,
    /// Its cgroup directory in the cpu controller's hierarchy before.
    home: PathBuf,
    cg: TestCgroup,
    released: bool,
}

impl Starved {
    fn new(pid: i32, quota_us: u64) -> Starved {
        let rel = cgroup_of(pid, "cpu").expect("the daemon's cpu cgroup");
        let home = cgroups::dir_of("cpu", &rel);
        let cg = TestCgroup::new("apptheus-starved", &["cpu"]);
        cg.limit_cpu(quota_us);
        let starved = Starved {
            pid,
            home,
            cg,
            released: false,
        };
        std::fs::write(starved.cg.dir("cpu").join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving the daemon {pid} into the starved cgroup: {e}"));
        assert_eq!(cgroup_of(pid, "cpu"), Some(starved.cg.rel()));
        starved
    }

    /// `nr_periods`, `nr_throttled` and the throttled time (s) of the starved cgroup so far.
    fn throttling(&self) -> (u64, u64, f64) {
        let stat = cgroups::read(&self.cg.dir("cpu"), "cpu.stat");
        let field = |k: &str| -> u64 {
            stat.lines()
                .find_map(|l| l.strip_prefix(&format!("{k} "))?.trim().parse().ok())
                .unwrap_or(0)
        };
        // v1: throttled_time in ns; v2: throttled_usec.
        let throttled = if stat.contains("throttled_usec") {
            field("throttled_usec") as f64 / 1e6
        } else {
            field("throttled_time") as f64 / 1e9
        };
        (field("nr_periods"), field("nr_throttled"), throttled)
    }

    /// Another quota (µs per 100 ms period).
    fn set_quota(&self, quota_us: u64) {
        self.cg.limit_cpu(quota_us);
    }

    /// Move the daemon back where it was.
    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        if let Err(e) = std::fs::write(self.home.join("cgroup.procs"), self.pid.to_string()) {
            // Gone already (a crashed daemon): nothing left to move.
            eprintln!(
                "moving the daemon {} back to {}: {e}",
                self.pid,
                self.home.display()
            );
        }
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        self.release();
        // `self.cg` goes next, now empty.
    }
}

/// The states of `jobs` in one squeue call (job id -> state).
fn job_states(slurm: &Slurm, jobs: &[u32]) -> std::collections::HashMap<u32, String> {
    let list: Vec<String> = jobs.iter().map(u32::to_string).collect();
    let out = slurm
        .command("squeue")
        .args(["-h", "-t", "all", "-j", &list.join(","), "-o", "%i %T"])
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, st) = l.trim().split_once(' ')?;
            Some((id.parse().ok()?, st.to_string()))
        })
        .collect()
}

const NOT_ENDED: [&str; 5] = [
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
];

/// The summary file's lines (one JSON object per ended container) by job id.
fn summaries_by_job(path: &Path) -> std::collections::HashMap<String, serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("job_id")?.as_str()?.to_string(), v)))
        .collect()
}

/// slurmd's log lines about a cgroup of `job` that could not be removed: those of
/// `Slurm::rmdir_failures` and, stricter, any `Cannot rmdir` or `not empty` line naming the
/// job's own directory (a batch-only job has no other step to keep it).
fn any_rmdir_failure(slurm: &Slurm, job: u32) -> Vec<String> {
    let mut lines = slurm.rmdir_failures(job);
    let dir = format!("job_{job}");
    for l in slurm.slurmd_log().lines() {
        if l.contains(&dir)
            && (l.contains("Cannot rmdir") || l.contains("not empty"))
            && !lines.iter().any(|x| x == l)
        {
            lines.push(l.to_string());
        }
    }
    lines
}

/// How many batch jobs the starved-daemon test runs.
const STARVED_JOBS: usize = 20;
/// The starved daemon's CPU, µs per 100 ms period: 1% of one CPU first, more (5%, 25%) only on
/// a machine where a probe job's admission takes longer than `SLOW_NOT_DEAD` at the lower quota
/// (a slow guest: at 1% there, admission took 28 s, beyond --wait's 40 s for some).
const STARVED_QUOTAS_US: [u64; 3] = [1000, 5000, 25_000];
/// The longest admission a probe job may wait at a quota for the test to keep it: a quarter of
/// apptheus-exec's --wait, so that the daemon is slow, not dead.
const SLOW_NOT_DEAD: f64 = 10.0;

/// The seconds from a job output's `t0 <time>` line (the script's start) to its `cmd <time>`
/// line (CMD's start, right after the daemon's `ok`): the admission's wait.
fn admission_wait(out: &str) -> Option<f64> {
    let time = |tag: &str| -> Option<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix(tag)?.trim().parse().ok())
    };
    Some(time("cmd ")? - time("t0 ")?)
}

/// The race of README's slurmstepd paragraph, made deterministic: the daemon gets 1% of one
/// CPU (more on a machine where that leaves it dead rather than slow: `STARVED_QUOTAS_US`,
/// chosen by a probe job each), and 20 batch jobs whose script's last command is `apptheus-exec -- CMD` (a 0.1 s CPU
/// loop) run, two at a time (the node's two CPUs). slurmstepd removes each job's cgroups once,
/// right after the script (so apptheus-exec) exits; apptheus-exec exits only once the daemon
/// has told it `end` (the container's own directories gone). Every job must complete, be
/// measured (its summary line, with its job id), leave no cgroup in any hierarchy, and leave
/// no failed rmdir in slurmd's log; apptheus-exec must print no warning (admitted within
/// --wait, end confirmed within --end-wait).
#[test]
fn starved_daemon_apptheus_exec_last_in_batch_scripts_leaves_no_cgroup() {
    let slurm = Slurm::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.jsonl");
    let d = Daemon::start(&[
        "--monitor.interval=200ms",
        &format!("--container.summary-file={}", s(&summary)),
    ]);
    let mut starved = Starved::new(d.child.id() as i32, STARVED_QUOTAS_US[0]);
    let script = dir.path().join("job.sh");
    // CMD prints when it starts (right after the daemon's `ok`): the admission's wait, from
    // the script's own `t0`. apptheus-exec is the script's last command.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho t0 $(date +%s.%N)\n{} --socket={} -- sh -c 'echo cmd $(date +%s.%N); exec {} burn:0.1'\n",
            s(&bin("apptheus-exec")),
            d.socket.display(),
            s(&workload_bin()),
        ),
    )
    .expect("script");
    // The quota: the lowest at which a probe job is admitted within SLOW_NOT_DEAD.
    let mut quota = None;
    let mut probes = Vec::new();
    for (n, &q) in STARVED_QUOTAS_US.iter().enumerate() {
        starved.set_quota(q);
        let out = dir.path().join(format!("probe-{n}.out"));
        let probe = slurm.sbatch(&script, &["--mem=64M", &format!("--output={}", s(&out))]);
        let ended = eventually(Duration::from_secs(120), || {
            slurm
                .job_state(probe)
                .filter(|st| !NOT_ENDED.contains(&st.as_str()))
        });
        let wait = admission_wait(&std::fs::read_to_string(&out).unwrap_or_default());
        eprintln!(
            "probe job {probe} with the daemon at {q} us per 100 ms: {ended:?}, admission {wait:?} s"
        );
        probes.push(format!("{q} us: {wait:?} s"));
        if ended.is_some() && wait.is_some_and(|w| w <= SLOW_NOT_DEAD) {
            quota = Some(q);
            break;
        }
    }
    let quota = quota.unwrap_or_else(|| {
        panic!(
            "the daemon is too slow to be admitted within {SLOW_NOT_DEAD} s even at {} us of CPU per 100 ms (probe admissions: {probes:?}): the test cannot show a slow daemon here\n{}",
            STARVED_QUOTAS_US[STARVED_QUOTAS_US.len() - 1],
            d.log_text()
        )
    });
    let (periods0, throttled0, throttled_s0) = starved.throttling();
    let started = Instant::now();
    let jobs: Vec<u32> = (0..STARVED_JOBS)
        .map(|i| {
            slurm.sbatch(
                &script,
                &[
                    "--mem=64M",
                    &format!("--output={}", s(&dir.path().join(format!("{i}.out")))),
                ],
            )
        })
        .collect();
    let out_of = |i: usize| std::fs::read_to_string(dir.path().join(format!("{i}.out")));
    // All ended: a few minutes at most (two at a time, each waiting for its admission).
    let ended = eventually(Duration::from_secs(300), || {
        let states = job_states(&slurm, &jobs);
        jobs.iter()
            .all(|j| {
                states
                    .get(j)
                    .is_some_and(|s| !NOT_ENDED.contains(&s.as_str()))
            })
            .then_some(states)
    });
    let took = started.elapsed();
    let (periods, throttled, throttled_s) = starved.throttling();
    let (periods, throttled, throttled_s) = (
        periods - periods0,
        throttled - throttled0,
        throttled_s - throttled_s0,
    );
    starved.release();
    let mut problems = Vec::new();
    let states = ended.unwrap_or_else(|| {
        problems.push(format!(
            "not every job ended within 300 s: {:?}",
            job_states(&slurm, &jobs)
        ));
        job_states(&slurm, &jobs)
    });
    let mut left_total = 0;
    let mut failures_total = 0;
    let mut waits = Vec::new();
    for (i, &job) in jobs.iter().enumerate() {
        let st = states.get(&job).map(String::as_str);
        if st != Some("COMPLETED") {
            problems.push(format!("job {job}: state {st:?}, not COMPLETED"));
        }
        if let Err(left) = slurm.wait_job_gone(job, GONE_WITHIN) {
            left_total += left.len();
            problems.push(format!(
                "job {job}: {} cgroup directories left {GONE_WITHIN:?} after its end, e.g. {:?}",
                left.len(),
                left.iter().rev().take(3).collect::<Vec<_>>()
            ));
        }
        let failures = any_rmdir_failure(&slurm, job);
        if !failures.is_empty() {
            failures_total += failures.len();
            problems.push(format!(
                "job {job}: slurmd logged {} failed rmdir(s), first: {}",
                failures.len(),
                failures[0]
            ));
        }
        let out = out_of(i).unwrap_or_default();
        match admission_wait(&out) {
            Some(w) => waits.push(w),
            None => problems.push(format!("job {job}: no t0/cmd times in its output:\n{out}")),
        }
        if out.contains("apptheus-exec:") {
            problems.push(format!("job {job}: apptheus-exec warned:\n{out}"));
        }
    }
    // Every job measured: one summary line each, with its job id.
    let summaries = eventually(Duration::from_secs(10), || {
        let by_job = summaries_by_job(&summary);
        jobs.iter()
            .all(|j| by_job.contains_key(&j.to_string()))
            .then_some(by_job)
    })
    .unwrap_or_else(|| summaries_by_job(&summary));
    let measured = jobs
        .iter()
        .filter(|j| summaries.contains_key(&j.to_string()))
        .count();
    if measured != jobs.len() {
        problems.push(format!(
            "{measured} of {} jobs have a summary line (job_id) in {}",
            jobs.len(),
            summary.display()
        ));
    }
    // The daemon's `end` sent after RELEASE_WAIT without the cgroup let go of, for these
    // jobs' containers (not the probes').
    let containers: Vec<String> = jobs
        .iter()
        .filter_map(|j| summaries.get(&j.to_string())?.get("container")?.as_str())
        .map(|c| format!("container={c}"))
        .collect();
    let late: Vec<String> = d
        .log_text()
        .lines()
        .filter(|l| l.contains("not let go of in time"))
        .filter(|l| containers.iter().any(|c| l.ends_with(c.as_str())))
        .map(str::to_owned)
        .collect();
    waits.sort_by(f64::total_cmp);
    let median = waits.get(waits.len() / 2).copied().unwrap_or(f64::NAN);
    let max = waits.last().copied().unwrap_or(f64::NAN);
    eprintln!(
        "{} jobs with the daemon at {quota} us of CPU per 100 ms (probes: {probes:?}): ended in {:.1} s; \
         daemon throttled in {throttled} of {periods} periods ({throttled_s:.1} s); admission \
         (script's t0 to CMD's start) median {median:.2} s, max {max:.2} s; {measured} measured; \
         {left_total} cgroup directories left; {failures_total} failed rmdirs; {} launchers told \
         `end` before the cgroup was let go of",
        jobs.len(),
        took.as_secs_f64(),
        late.len()
    );
    if !late.is_empty() {
        problems.push(format!(
            "the daemon told {} launchers `end` before it let go of their cgroups: {late:?}",
            late.len()
        ));
    }
    if throttled == 0 {
        problems.push("the daemon was never throttled: not starved".to_string());
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n- {}\n\nslurmd's rmdir lines:\n{}\n\napptheus log:\n{}",
        problems.len(),
        problems.join("\n- "),
        slurm
            .slurmd_log()
            .lines()
            .filter(|l| l.contains("rmdir") || l.contains("not empty"))
            .collect::<Vec<_>>()
            .join("\n"),
        d.log_text()
            .lines()
            .filter(|l| !l.contains("source=aya"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `apptheus-exec --report -- CMD` in a batch job: the job's output file (its stderr) holds the
/// container's report, whose first line names the container and the job (`job <id> (slurm)`,
/// named from Slurm's cgroup), read from the daemon's query socket. CMD is a 2 s CPU loop.
#[test]
fn apptheus_exec_report_in_a_batch_job() {
    let slurm = Slurm::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.jsonl");
    let summary_arg = format!("--container.summary-file={}", s(&summary));
    let d = Daemon::start(&["--monitor.interval=200ms", summary_arg.as_str()]);
    let query = d.query.clone();
    let script = dir.path().join("job.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{} --socket={} --query-socket={} --report -- {} burn:2\n",
            s(&bin("apptheus-exec")),
            d.socket.display(),
            s(&query),
            s(&workload_bin()),
        ),
    )
    .expect("script");
    let output = dir.path().join("out");
    let job = slurm.sbatch(&script, &["--mem=64M", &format!("--output={}", s(&output))]);
    let ended = eventually(Duration::from_secs(60), || {
        slurm
            .job_state(job)
            .filter(|st| !NOT_ENDED.contains(&st.as_str()))
    });
    let mut problems = Vec::new();
    if ended.as_deref() != Some("COMPLETED") {
        problems.push(format!("job state {ended:?}, not COMPLETED"));
    }
    let gone = slurm.wait_job_gone(job, GONE_WITHIN);
    if let Err(left) = &gone {
        problems.push(format!("cgroups of job {job} left: {left:?}"));
    }
    let failures = any_rmdir_failure(&slurm, job);
    if !failures.is_empty() {
        problems.push(format!("slurmd logged failed rmdirs: {failures:?}"));
    }
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    let container = eventually(Duration::from_secs(10), || {
        summaries_by_job(&summary)
            .get(&job.to_string())?
            .get("container")?
            .as_str()
            .map(str::to_owned)
    });
    eprintln!(
        "sbatch job {job} running apptheus-exec --report -- workload burn:2, container {container:?}; its output:\n{text}"
    );
    match &container {
        None => problems.push(format!("no summary line for job {job}")),
        Some(id) => {
            // The report: its first line names the container, the job and how it ended.
            let first = text
                .lines()
                .find(|l| l.starts_with(id.as_str()))
                .unwrap_or_default();
            for want in [
                format!("job {job} (slurm)"),
                "ended, exit status 0".to_string(),
            ] {
                if !first.contains(&want) {
                    problems.push(format!(
                        "the report's first line has no {want:?}: {first:?}"
                    ));
                }
            }
            for row in ["Wall time", "CPU time", "Memory peak"] {
                if !text.lines().any(|l| l.trim_start().starts_with(row)) {
                    problems.push(format!("the report has no {row:?} row"));
                }
            }
            if text.contains("apptheus-exec:") {
                problems.push("apptheus-exec warned or had no report".to_string());
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n- {}\n\nthe job's output:\n{text}\n\napptheus log:\n{}",
        problems.len(),
        problems.join("\n- "),
        d.log_text()
            .lines()
            .filter(|l| !l.contains("source=aya"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
