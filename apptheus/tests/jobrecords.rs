//! Job records the site keeps: a real Slurm with accounting (slurmctld, slurmd, slurmdbd on a
//! MariaDB of its own), batch jobs run through `apptheus-exec` beside the daemon, the node's
//! agent remote-writing to a central Prometheus (deploy/prometheus), and
//! deploy/slurm/apptheus-epilog.sh as `EpilogSlurmctld`. Each job's `AdminComment` is read back
//! with `sacct` and decoded through jobstats' documented pipeline, then held against the
//! daemon's own summary record of the job's container.
//!
//! Every tool is real (Debian's `slurmdbd`, `mariadb-server`, `prometheus`; `cargo xtask setup
//! --test` installs them); a missing one fails the test naming its package.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, bin, eventually, fleet, slurm::Slurm, unique, workload_bin};
use serde_json::Value;

/// The epilog as shipped.
fn shipped_epilog() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm/apptheus-epilog.sh")
}

/// What slurm.conf's `EpilogSlurmctld` names: a wrapper in `dir` that points the shipped
/// epilog at `dir/epilog.conf` (slurmctld gives its epilogs no environment of its own choosing),
/// which `configure` writes once the cluster is up.
fn epilog_wrapper(dir: &Path) -> PathBuf {
    let wrapper = dir.join("epilog.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nAPPTHEUS_EPILOG_CONF={} exec {} \"$@\"\n",
            dir.join("epilog.conf").display(),
            shipped_epilog().display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).unwrap();
    wrapper
}

/// The epilog's configuration, as /etc/default/apptheus-epilog would hold it.
fn configure(dir: &Path, slurm: &Slurm, store: &str, timeout_s: u32) -> PathBuf {
    let log = dir.join("epilog.log");
    std::fs::write(
        dir.join("epilog.conf"),
        format!(
            "APPTHEUS_PROMETHEUS_URL={store}\nAPPTHEUS_REPORT={}\nAPPTHEUS_EPILOG_LOG={}\n\
             APPTHEUS_EPILOG_TIMEOUT={timeout_s}\nAPPTHEUS_EPILOG_SETTLE=30\n\
             APPTHEUS_EPILOG_SPOOL={}\nexport SLURM_CONF={}\n",
            bin("apptheus-report").display(),
            log.display(),
            dir.join("spool").display(),
            slurm.conf.display()
        ),
    )
    .unwrap();
    log
}

/// A batch script whose last command is `apptheus-exec -- workload STEPS`.
fn batch(dir: &Path, d: &Daemon, steps: &str) -> PathBuf {
    let script = dir.join(format!("{}.sh", unique("job")));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} --socket={} -- {} {steps}\n",
            bin("apptheus-exec").display(),
            d.socket.display(),
            workload_bin().display()
        ),
    )
    .unwrap();
    script
}

/// The job's state once it left the queue (60 s at most).
fn ended(slurm: &Slurm, job: u32) -> String {
    eventually(Duration::from_secs(60), || {
        slurm.job_state(job).filter(|st| {
            !["PENDING", "CONFIGURING", "RUNNING", "COMPLETING"].contains(&st.as_str())
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "job {job} did not end within 60 s:\n{}",
            slurm.logs_for_failure()
        )
    })
}

/// jobstats' pipeline, `sed 's/JS1://' | tr -d ' ' | base64 -d | gzip -d`, after `source`.
fn decode(source: &str) -> Result<Value, String> {
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("{source} | sed 's/JS1://' | tr -d ' ' | base64 -d | gzip -d"),
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out:?}"))
}

/// Job `job`'s record as the site reads it back: once the epilog said it is set (90 s at
/// most), `sacct -X -j JOB -n -o admincomment%4000` through jobstats' pipeline. Where this
/// Slurm's sacctmgr lowercased it (22.05, Debian 12's), the epilog said so: then the accounting
/// must hold exactly the record lowercased, and the record decoded is the spool's copy.
fn admin_comment(slurm: &Slurm, job: u32, dir: &Path) -> Value {
    let log = dir.join("epilog.log");
    let said = format!("job {job}: AdminComment set");
    let line = eventually(Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().find(|l| l.contains(&said)).map(str::to_string)
    })
    .unwrap_or_else(|| {
        panic!(
            "the epilog did not set job {job}'s AdminComment within 90 s; its log:\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            slurm.logs_for_failure()
        )
    });
    let sacct = format!(
        "SLURM_CONF={} {} -X -j {job} -n -o admincomment%4000",
        slurm.conf.display(),
        slurm.command("sacct").get_program().to_string_lossy()
    );
    let spool = dir.join("spool").join(format!("{job}.js1"));
    let record = std::fs::read_to_string(&spool)
        .unwrap_or_else(|e| panic!("{}: {e} ({line})", spool.display()));
    if !line.contains("lowercased") {
        return decode(&sacct).unwrap_or_else(|e| panic!("job {job}: {e} ({line})"));
    }
    let stored = Command::new("sh").args(["-c", &sacct]).output().unwrap();
    let stored: String = String::from_utf8_lossy(&stored.stdout)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert_eq!(stored, record.trim().to_lowercase(), "job {job}: {line}");
    println!(
        "NOTE job {job}: this Slurm's sacctmgr lowercased the AdminComment (the epilog: {line}); \
         the accounting holds the record lowercased, which jobstats cannot decode; the spool's \
         copy is decoded instead"
    );
    decode(&format!("cat {}", spool.display()))
        .unwrap_or_else(|e| panic!("job {job}: {e} ({line})"))
}

/// The daemon's summary record of job `job`'s container.
fn summary_of(summaries: &Path, job: u32) -> Value {
    let key = format!("\"job_id\":\"{job}\"");
    let line = eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(summaries).ok()?;
        Some(text.lines().find(|l| l.contains(&key))?.to_string())
    })
    .unwrap_or_else(|| panic!("no summary record of job {job}"));
    serde_json::from_str(&line).unwrap()
}

const MIB: f64 = 1024.0 * 1024.0;

/// Three batch jobs (a CPU burn on 2 CPUs using one, 300 MiB under `--mem=1G`, an OOM kill
/// under `--mem=64M`): each one's AdminComment, decoded, has this node's part with the CPU
/// seconds the daemon measured (within 2%), its memory peak (within 5%), and the job's
/// allocation (CPUs and memory).
#[test]
fn each_job_gets_its_jobstats_record_in_slurm_accounting() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let summaries = dir.path().join("summaries.jsonl");
    let node = unique("rec");
    let central = fleet::central();
    let d = Daemon::start(&[
        "--monitor.interval=200ms",
        "--container.retention=5m",
        &format!("--container.summary-file={}", summaries.display()),
    ]);
    let _agent = fleet::agent(&format!("127.0.0.1:{}", d.port), &central, &node);
    let wrapper = epilog_wrapper(dir.path());
    let slurm = Slurm::start_accounted(&format!("EpilogSlurmctld={}", wrapper.display()));
    let log = configure(dir.path(), &slurm, &central.url, 120);

    let out = |name: &str| format!("--output={}", dir.path().join(name).display());
    let jobs = [
        (
            "cpu",
            slurm.sbatch(
                &batch(dir.path(), &d, "burn:3"),
                &["-c", "2", "--mem=256M", &out("cpu.out")],
            ),
            2.0,
            256.0 * MIB,
        ),
        (
            "memory",
            slurm.sbatch(
                &batch(dir.path(), &d, "alloc:300 sleep:1"),
                &["--mem=1G", &out("memory.out")],
            ),
            1.0,
            1024.0 * MIB,
        ),
        (
            "oom",
            slurm.sbatch(
                &batch(dir.path(), &d, "alloc:200"),
                &["--mem=64M", &out("oom.out")],
            ),
            1.0,
            64.0 * MIB,
        ),
    ];
    for (what, job, cpus, memory) in jobs {
        let state = ended(&slurm, job);
        let record = admin_comment(&slurm, job, dir.path());
        let summary = summary_of(&summaries, job);
        println!("{what} job {job} ({state}): record {record}\n  summary {summary}");
        let parts = record["nodes"].as_object().unwrap();
        assert_eq!(parts.len(), 1, "{record}");
        let part = &record["nodes"][node.as_str()];
        let cpu = summary["cpu_seconds"].as_f64().unwrap();
        let total_time = part["total_time"].as_f64().unwrap();
        // To the millisecond in the record.
        assert!(
            (total_time - cpu).abs() <= 0.02 * cpu + 0.0005,
            "{what}: total_time {total_time} vs the daemon's {cpu} s: {record}"
        );
        let peak = summary["memory_peak_bytes"].as_f64().unwrap();
        let used = part["used_memory"].as_f64().unwrap();
        assert!(
            (used - peak).abs() <= 0.05 * peak,
            "{what}: used_memory {used} vs the daemon's peak {peak}: {record}"
        );
        assert_eq!(part["cpus"].as_f64(), Some(cpus), "{what}: {record}");
        assert_eq!(
            part["total_memory"].as_f64(),
            Some(memory),
            "{what}: {record}"
        );
        assert_eq!(record["gpus"], 0, "{record}");
        assert!(record["total_time"].as_u64().is_some(), "{record}");
        match what {
            "cpu" => assert!(cpu >= 2.9, "{summary}"),
            "memory" => assert!(peak >= 300.0 * MIB, "{summary}"),
            _ => {
                assert_eq!(state, "OUT_OF_MEMORY", "{summary}");
                assert!(summary["oom_kills"].as_u64() >= Some(1), "{summary}");
            }
        }
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.matches("AdminComment set").count(), 3, "{lines}");
    println!(
        "{lines}job records test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// With the store down when a job ends, the job completes as it would have, and the epilog
/// exits 0 within its bound, saying in its log why there is no record.
#[test]
fn a_store_that_is_down_costs_the_job_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let wrapper = epilog_wrapper(dir.path());
    let slurm = Slurm::start_accounted(&format!("EpilogSlurmctld={}", wrapper.display()));
    // Nothing listens on the discard port.
    let log = configure(dir.path(), &slurm, "http://127.0.0.1:9", 20);
    let job = slurm.sbatch(
        &batch(dir.path(), &d, "burn:0.2"),
        &[
            "--mem=64M",
            &format!("--output={}", dir.path().join("out").display()),
        ],
    );
    assert_eq!(ended(&slurm, job), "COMPLETED");
    let line = eventually(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines()
            .find(|l| l.contains("no record"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| {
        panic!(
            "the epilog logged nothing within 30 s:\n{}",
            slurm.logs_for_failure()
        )
    });
    println!("{line}");
    assert!(
        line.contains(&format!("job {job}")) && line.contains("cannot reach the store"),
        "{line}"
    );
    // slurmctld ran it to a zero status (it logs a failed epilog as an error).
    let ctld = slurm.slurmctld_log();
    assert!(
        !ctld
            .lines()
            .any(|l| l.contains("epilog") && l.contains("error")),
        "{ctld}"
    );
    // The accounting has the job, completed (slurmctld sends it on its own time), and no record.
    let text = eventually(Duration::from_secs(30), || {
        let out = slurm
            .command("sacct")
            .args([
                "-X",
                "-j",
                &job.to_string(),
                "-n",
                "-o",
                "state,admincomment%200",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("COMPLETED").then_some(text)
    })
    .unwrap_or_else(|| panic!("sacct does not show job {job} completed within 30 s"));
    assert!(!text.contains("JS1:") && !text.contains("js1:"), "{text}");
}
