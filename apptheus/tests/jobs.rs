//! Job identity from the launcher's environment, end to end: the real daemon, real
//! `apptheus-exec` launchers started with the environments PBS, LSF, HTCondor, Flux and Slurm
//! give their jobs, and `apptheus_container_job_info` as /metrics shows it. (Slurm's cgroup
//! layout, which names a job from the kernel's side, is tests/slurm.rs's, with a real Slurm.)
//!
//! None of these launchers is in a batch system's cgroup, so every job here is named by the
//! environment, which the user controls: `job_source="environment"`, a forged Slurm job id too.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{process::Command, time::Duration};

use common::{Daemon, Workload, bin, eventually, workload_bin};

/// Every variable a scheduler's environment could name a job with: cleared from each
/// launcher's environment (the test may itself run inside a job), then set as each case says.
const JOB_VARIABLES: [&str; 10] = [
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_JOB_ACCOUNT",
    "SLURM_JOB_PARTITION",
    "PBS_JOBID",
    "LSB_JOBID",
    "FLUX_JOB_ID",
    "_CONDOR_JOB_AD",
    "APPTAINER_CONTAINER",
    "SINGULARITY_CONTAINER",
];

/// `apptheus-exec` running a waiting workload with exactly `env` as its job's variables.
fn launcher(d: &Daemon, env: &[(&str, &str)]) -> Workload {
    let mut cmd = Command::new(bin("apptheus-exec"));
    cmd.arg(format!("--socket={}", d.socket.display()))
        .arg("--")
        .arg(workload_bin())
        .args(["ready", "wait"]);
    for k in JOB_VARIABLES {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let mut w = Workload::spawn_cmd(&mut cmd);
    w.ready();
    w
}

/// The labels after `container="..."` of the launcher's `apptheus_container_job_info`, once
/// /metrics has it.
fn job_labels(d: &Daemon, w: &Workload) -> String {
    let container = format!("container=\"apptheus-exec_{}\"", w.pid());
    eventually(Duration::from_secs(10), || {
        d.metrics()
            .lines()
            .find(|l| l.starts_with("apptheus_container_job_info{") && l.contains(&container))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no job_info for {container}:\n{}", d.metrics()))
    .split(",user=\"root\",")
    .nth(1)
    .unwrap_or_default()
    .trim_end_matches(" 1")
    .trim_end_matches('}')
    .to_string()
}

#[test]
fn batch_systems_are_named_from_the_launchers_environment() {
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let ad_dir = tempfile::tempdir().unwrap();
    let ad = ad_dir.path().join(".job.ad");
    std::fs::write(
        &ad,
        "Owner = \"alice\"\nClusterId = 1234\nProcId = 5\nJobUniverse = 5\n",
    )
    .unwrap();
    let ad = ad.to_str().unwrap();
    let cases: [(&[(&str, &str)], &str); 6] = [
        (
            &[("PBS_JOBID", "4242.pbs01.example.org")],
            "scheduler=\"pbs\",job_id=\"4242.pbs01.example.org\",job_source=\"environment\"",
        ),
        (
            &[("LSB_JOBID", "8086")],
            "scheduler=\"lsf\",job_id=\"8086\",job_source=\"environment\"",
        ),
        (
            &[("_CONDOR_JOB_AD", ad)],
            "scheduler=\"htcondor\",job_id=\"1234.5\",job_source=\"environment\"",
        ),
        (
            &[("FLUX_JOB_ID", "ƒ2Gj8sq3X")],
            "scheduler=\"flux\",job_id=\"ƒ2Gj8sq3X\",job_source=\"environment\"",
        ),
        (
            &[
                ("FLUX_JOB_ID", "ƒ9"),
                ("APPTAINER_CONTAINER", "/images/lolcow.sif"),
            ],
            "scheduler=\"flux\",job_id=\"ƒ9\",job_source=\"environment\",image=\"/images/lolcow.sif\"",
        ),
        (&[], "scheduler=\"none\""),
    ];
    let mut launchers = Vec::new();
    for (env, _) in &cases {
        launchers.push(launcher(&d, env));
    }
    for ((env, want), w) in cases.iter().zip(&launchers) {
        assert_eq!(job_labels(&d, w), *want, "environment {env:?}");
    }
    for mut w in launchers {
        w.go();
        assert!(w.wait().success());
    }
}

/// A launcher outside any Slurm cgroup with Slurm's variables in its environment (set by the
/// user, or inherited from a login shell that once ran in a job) is labelled with that job, but
/// as the environment's word for it: `job_source="environment"`, never `cgroup`.
#[test]
fn a_forged_slurm_job_id_outside_slurms_cgroups_says_environment() {
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let w = launcher(
        &d,
        &[
            ("SLURM_JOB_ID", "31337"),
            ("SLURM_JOB_ACCOUNT", "not-mine"),
            ("SLURM_JOB_PARTITION", "gpu"),
        ],
    );
    assert_eq!(
        job_labels(&d, &w),
        "scheduler=\"slurm\",job_id=\"31337\",job_source=\"environment\",account=\"not-mine\",partition=\"gpu\""
    );
    let mut w = w;
    w.go();
    assert!(w.wait().success());
}
