//! Which batch job a container belongs to.
//!
//! From the launcher's cgroup where the batch system's layout names the job (Slurm: a
//! root-owned `job_<id>` directory below its `slurm`, `slurm_<node>` or `*slurmstepd.scope`
//! directory, in its v1 and v2 layouts), else from the launcher's environment. Users control
//! their environment: what comes from it is a label (`source="environment"`), never a trust
//! decision.
use std::{
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Longest label value taken from a user's environment.
const MAX_VALUE: usize = 256;
/// Most of a process's environment that is read.
const MAX_ENVIRON: u64 = 1 << 20;
/// Most of an HTCondor job ad that is read.
const MAX_JOB_AD: u64 = 1 << 20;

/// A container's batch job. Empty strings are unknown (their labels are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    /// `slurm`, `pbs`, `lsf`, `htcondor`, `flux`; empty for none.
    pub scheduler: String,
    pub id: String,
    /// `cgroup` or `environment`.
    pub source: String,
    /// Slurm's account and partition, where the environment has them.
    pub account: String,
    pub partition: String,
    /// The Apptainer image the container runs, where its environment names it.
    pub image: String,
}

impl Job {
    /// The `scheduler` label: `none` without a job.
    pub fn scheduler_label(&self) -> &str {
        if self.scheduler.is_empty() {
            "none"
        } else {
            &self.scheduler
        }
    }

    /// The job of a launcher in cgroups `cgroup_dirs` (its directory in each hierarchy), with
    /// `environs` the environments of its processes (the launcher's first).
    pub fn find(cgroup_dirs: &[PathBuf], environs: &[Vec<(String, String)>]) -> Job {
        let mut job = cgroup_dirs
            .iter()
            .find_map(|dir| slurm_job_of_cgroup(dir))
            .map(|id| Job {
                scheduler: "slurm".into(),
                id,
                source: "cgroup".into(),
                ..Job::default()
            })
            .unwrap_or_default();
        let env = environs.first().map_or(&[][..], |e| &e[..]);
        if job.id.is_empty() {
            job = from_environment(env);
        }
        if job.scheduler == "slurm" {
            job.account = value(env, "SLURM_JOB_ACCOUNT");
            job.partition = value(env, "SLURM_JOB_PARTITION");
        }
        job.image = environs
            .iter()
            .find_map(|env| {
                ["APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"]
                    .iter()
                    .map(|k| value(env, k))
                    .find(|v| !v.is_empty())
            })
            .unwrap_or_default();
        job
    }
}

/// A Slurm job id named by a cgroup directory: `.../<slurm root>/.../job_<id>/...`, where the
/// `job_<id>` directory belongs to root (a user may make directories of any name in a cgroup
/// delegated to them, but not root's).
fn slurm_job_of_cgroup(dir: &Path) -> Option<String> {
    let mut under_slurm = false;
    let mut prefix = PathBuf::new();
    for part in dir.components() {
        prefix.push(part);
        let name = part.as_os_str().to_str()?;
        if name == "slurm" || name.starts_with("slurm_") || name.ends_with("slurmstepd.scope") {
            under_slurm = true;
            continue;
        }
        let Some(id) = name.strip_prefix("job_") else {
            continue;
        };
        let numeric = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
        if under_slurm && numeric && std::fs::metadata(&prefix).is_ok_and(|m| m.uid() == 0) {
            return Some(id.to_string());
        }
    }
    None
}

/// The job a launcher's environment names.
fn from_environment(env: &[(String, String)]) -> Job {
    let found = [
        ("slurm", "SLURM_JOB_ID"),
        ("pbs", "PBS_JOBID"),
        ("lsf", "LSB_JOBID"),
        ("flux", "FLUX_JOB_ID"),
    ]
    .iter()
    .map(|(scheduler, key)| (*scheduler, value(env, key)))
    .find(|(_, id)| !id.is_empty())
    .or_else(|| Some(("htcondor", htcondor_job(&value(env, "_CONDOR_JOB_AD"))?)));
    match found {
        Some((scheduler, id)) => Job {
            scheduler: scheduler.into(),
            id,
            source: "environment".into(),
            ..Job::default()
        },
        None => Job::default(),
    }
}

/// `<ClusterId>.<ProcId>` from the HTCondor job ad that `_CONDOR_JOB_AD` names. The path comes
/// from the user: only a regular file named `.job.ad` is read (no symlink followed, bounded),
/// and only those two integers are taken from it.
fn htcondor_job(path: &str) -> Option<String> {
    let path = Path::new(path);
    if path.file_name()? != ".job.ad" {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_JOB_AD).read_to_string(&mut text).ok()?;
    let attr = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            (k.trim() == name && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.to_string())
        })
    };
    Some(format!("{}.{}", attr("ClusterId")?, attr("ProcId")?))
}

/// The value of `key`, cut to `MAX_VALUE` bytes (on a character boundary); empty if unset.
fn value(env: &[(String, String)], key: &str) -> String {
    let Some((_, v)) = env.iter().find(|(k, _)| k == key) else {
        return String::new();
    };
    let mut end = v.len().min(MAX_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

/// The environment process `pid` started with (its `/proc/<pid>/environ`, bounded); empty if
/// unreadable.
pub fn environ(pid: i32) -> Vec<(String, String)> {
    let mut bytes = Vec::new();
    let read = std::fs::File::open(format!("/proc/{pid}/environ"))
        .and_then(|f| f.take(MAX_ENVIRON).read_to_end(&mut bytes));
    if read.is_err() {
        return Vec::new();
    }
    parse_environ(&bytes)
}

/// `KEY=value` entries separated by NUL; entries that are not UTF-8 or have no `=` are skipped.
pub fn parse_environ(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (k, v) = entry.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn slurm_layouts_name_the_job() {
        // The paths must exist and belong to root: made below a temporary directory, as root.
        let tmp = tempfile::tempdir().unwrap();
        for layout in [
            "memory/slurm_node1/uid_1000/job_4242/step_0/task_0",
            "memory/slurm/uid_1000/job_4242/step_batch/task_0",
            "unified/system.slice/node1_slurmstepd.scope/job_4242/step_0/user/task_0",
            "unified/system.slice/slurmstepd.scope/job_4242/step_extern/user/task_special",
        ] {
            let dir = tmp.path().join(layout);
            std::fs::create_dir_all(&dir).unwrap();
            assert_eq!(
                slurm_job_of_cgroup(&dir).as_deref(),
                if nix::unistd::geteuid().is_root() {
                    Some("4242")
                } else {
                    None
                },
                "{layout}"
            );
        }
        for other in [
            "memory/user.slice/job_12",
            "memory/slurm_node1/uid_1000/job_x/step_0",
            "memory/slurm_node1/uid_1000",
        ] {
            let dir = tmp.path().join(other);
            std::fs::create_dir_all(&dir).unwrap();
            assert_eq!(slurm_job_of_cgroup(&dir), None, "{other}");
        }
    }

    #[test]
    fn environments_of_each_scheduler() {
        let cases = [
            (
                vec![
                    ("SLURM_JOB_ID", "77"),
                    ("SLURM_JOB_ACCOUNT", "proj1"),
                    ("SLURM_JOB_PARTITION", "gpu"),
                ],
                ("slurm", "77", "proj1", "gpu"),
            ),
            (vec![("PBS_JOBID", "12.pbs01")], ("pbs", "12.pbs01", "", "")),
            (vec![("LSB_JOBID", "3456")], ("lsf", "3456", "", "")),
            (vec![("FLUX_JOB_ID", "ƒ2Gj8")], ("flux", "ƒ2Gj8", "", "")),
            (vec![("HOME", "/root")], ("", "", "", "")),
        ];
        for (pairs, (scheduler, id, account, partition)) in cases {
            let job = Job::find(&[], &[env(&pairs)]);
            assert_eq!(
                (
                    job.scheduler.as_str(),
                    job.id.as_str(),
                    job.account.as_str(),
                    job.partition.as_str()
                ),
                (scheduler, id, account, partition),
                "{pairs:?}"
            );
            let source = if id.is_empty() { "" } else { "environment" };
            assert_eq!(job.source, source);
        }
        assert_eq!(Job::default().scheduler_label(), "none");
    }

    #[test]
    fn htcondor_job_ad() {
        let tmp = tempfile::tempdir().unwrap();
        let ad = tmp.path().join(".job.ad");
        std::fs::write(&ad, "Owner = \"alice\"\nClusterId = 123\nProcId = 4\n").unwrap();
        let job = Job::find(&[], &[env(&[("_CONDOR_JOB_AD", ad.to_str().unwrap())])]);
        assert_eq!(
            (job.scheduler.as_str(), job.id.as_str()),
            ("htcondor", "123.4")
        );
        // Another name, or a symlink to the ad, is not read.
        let other = tmp.path().join("shadow");
        std::fs::write(&other, "ClusterId = 1\nProcId = 2\n").unwrap();
        assert_eq!(htcondor_job(other.to_str().unwrap()), None);
        let link_dir = tmp.path().join("l");
        std::fs::create_dir(&link_dir).unwrap();
        std::os::unix::fs::symlink(&other, link_dir.join(".job.ad")).unwrap();
        assert_eq!(
            htcondor_job(link_dir.join(".job.ad").to_str().unwrap()),
            None
        );
    }

    #[test]
    fn images_values_and_environ() {
        let long = "x".repeat(1000);
        let job = Job::find(
            &[],
            &[
                env(&[("SLURM_JOB_ID", &long)]),
                env(&[("APPTAINER_CONTAINER", "/images/lolcow.sif")]),
            ],
        );
        assert_eq!(job.id.len(), MAX_VALUE);
        assert_eq!(job.image, "/images/lolcow.sif");
        assert_eq!(
            parse_environ(b"A=1\0B=x=y\0junk\0\xff=1\0"),
            env(&[("A", "1"), ("B", "x=y")])
        );
    }
}
