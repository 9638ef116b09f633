//! Which batch job a container belongs to.
//!
//! From the launcher's cgroup where the batch system's layout names the job (Slurm: a
//! root-owned `job_<id>` directory below its `slurm`, `slurm_<node>` or `*slurmstepd.scope`
//! directory, in its v1 and v2 layouts), else from the launcher's environment. Users control
//! their environment: what comes from it is a label (`source="environment"`), never a trust
//! decision.
use std::{
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::asuser;

/// Longest label value taken from a user's environment.
const MAX_VALUE: usize = 256;
/// Most of a process's environment that is read.
const MAX_ENVIRON: u64 = 1 << 20;
/// Longest environment entry looked at (the buffer it is read through): longer ones are no
/// job's name.
const ENTRY_MAX: usize = 8 << 10;
/// Most of an HTCondor job ad that is read, and how long its reading may take.
const MAX_JOB_AD: u64 = 1 << 20;
const JOB_AD_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// A container's batch job. Empty strings and `None` are unknown (their labels are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    /// `None` without a job.
    #[serde(with = "empty_is_none")]
    pub scheduler: Option<Scheduler>,
    pub id: String,
    /// Where the job was found; `None` without a job.
    #[serde(with = "empty_is_none")]
    pub source: Option<JobSource>,
    /// Slurm's account and partition, where the environment has them.
    pub account: String,
    pub partition: String,
    /// The Apptainer image the container runs, where its environment names it.
    pub image: String,
}

/// The batch system that runs a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    Slurm,
    Pbs,
    Lsf,
    Flux,
    Htcondor,
}

/// Where a container's job was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobSource {
    /// The batch system's cgroup layout (Slurm's root-owned `job_<id>`).
    Cgroup,
    /// The launcher's environment: a user's word, a label only.
    Environment,
}

/// A value with a fixed name: its label, log field and state-file entry.
trait Named: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

impl Scheduler {
    /// The `scheduler` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Slurm => "slurm",
            Scheduler::Pbs => "pbs",
            Scheduler::Lsf => "lsf",
            Scheduler::Flux => "flux",
            Scheduler::Htcondor => "htcondor",
        }
    }
}

impl Named for Scheduler {
    const ALL: &'static [Scheduler] = &[
        Scheduler::Slurm,
        Scheduler::Pbs,
        Scheduler::Lsf,
        Scheduler::Flux,
        Scheduler::Htcondor,
    ];
    fn as_str(self) -> &'static str {
        Scheduler::as_str(self)
    }
}

impl JobSource {
    /// The `job_source` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::Cgroup => "cgroup",
            JobSource::Environment => "environment",
        }
    }
}

impl Named for JobSource {
    const ALL: &'static [JobSource] = &[JobSource::Cgroup, JobSource::Environment];
    fn as_str(self) -> &'static str {
        JobSource::as_str(self)
    }
}

/// In the state file an unknown value is an empty string, as when these were strings: files
/// of earlier versions read the same, and earlier versions read these. A name this daemon does
/// not know (a hand-edited file) is read as unknown: the container is still taken back.
mod empty_is_none {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::Named;

    pub fn serialize<S: Serializer, T: Named>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.map_or("", T::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Named>(d: D) -> Result<Option<T>, D::Error> {
        let name = String::deserialize(d)?;
        Ok(T::ALL.iter().copied().find(|v| v.as_str() == name))
    }
}

impl Job {
    /// The `scheduler` label: `none` without a job.
    pub fn scheduler_label(&self) -> &'static str {
        self.scheduler.map_or("none", Scheduler::as_str)
    }

    /// The job of a launcher in cgroups `cgroup_dirs` (its directory in each hierarchy), with
    /// `environs` the environments of its processes (the launcher's first), and `user` who ran
    /// it (a file its environment names is read with their credentials).
    pub fn find(cgroup_dirs: &[PathBuf], environs: &[Env], user: (u32, u32)) -> Job {
        let mut job = cgroup_dirs
            .iter()
            .find_map(|dir| slurm_job_of_cgroup(dir))
            .map(|id| Job {
                scheduler: Some(Scheduler::Slurm),
                id,
                source: Some(JobSource::Cgroup),
                ..Job::default()
            })
            .unwrap_or_default();
        let empty = Env::default();
        let env = environs.first().unwrap_or(&empty);
        if job.id.is_empty() {
            job = from_environment(env, user);
        }
        if job.scheduler == Some(Scheduler::Slurm) {
            job.account = env.value(Var::SlurmJobAccount).to_string();
            job.partition = env.value(Var::SlurmJobPartition).to_string();
        }
        job.image = environs
            .iter()
            .find_map(|env| {
                [Var::ApptainerContainer, Var::SingularityContainer]
                    .into_iter()
                    .map(|k| env.value(k))
                    .find(|v| !v.is_empty())
            })
            .unwrap_or_default()
            .to_string();
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
fn from_environment(env: &Env, user: (u32, u32)) -> Job {
    let found = [
        (Scheduler::Slurm, Var::SlurmJobId),
        (Scheduler::Pbs, Var::PbsJobid),
        (Scheduler::Lsf, Var::LsbJobid),
        (Scheduler::Flux, Var::FluxJobId),
    ]
    .into_iter()
    .map(|(scheduler, key)| (scheduler, env.value(key)))
    .find(|(_, id)| !id.is_empty())
    .map(|(scheduler, id)| (scheduler, id.to_string()))
    .or_else(|| {
        Some((
            Scheduler::Htcondor,
            htcondor_job(env.value(Var::CondorJobAd), user)?,
        ))
    });
    match found {
        Some((scheduler, id)) => Job {
            scheduler: Some(scheduler),
            id,
            source: Some(JobSource::Environment),
            ..Job::default()
        },
        None => Job::default(),
    }
}

/// `<ClusterId>.<ProcId>` from the HTCondor job ad that `_CONDOR_JOB_AD` names. The path is the
/// user's word: it is read as `user` (uid, gid), only if it is a regular file named `.job.ad`
/// (see `asuser`), and only those two integers are taken from it.
fn htcondor_job(path: &str, (uid, gid): (u32, u32)) -> Option<String> {
    let path = Path::new(path);
    if path.file_name()? != ".job.ad" {
        return None;
    }
    let bytes = match asuser::read(uid, gid, path.to_path_buf(), MAX_JOB_AD, JOB_AD_WITHIN) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(uid, error = %e, "cannot read the job ad the launcher's environment names");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&bytes);
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

/// The variables of a launcher's environment that name its job and image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    SlurmJobId,
    SlurmJobAccount,
    SlurmJobPartition,
    PbsJobid,
    LsbJobid,
    FluxJobId,
    CondorJobAd,
    ApptainerContainer,
    SingularityContainer,
}

impl Var {
    const ALL: [Var; 9] = [
        Var::SlurmJobId,
        Var::SlurmJobAccount,
        Var::SlurmJobPartition,
        Var::PbsJobid,
        Var::LsbJobid,
        Var::FluxJobId,
        Var::CondorJobAd,
        Var::ApptainerContainer,
        Var::SingularityContainer,
    ];

    fn name(self) -> &'static [u8] {
        match self {
            Var::SlurmJobId => b"SLURM_JOB_ID",
            Var::SlurmJobAccount => b"SLURM_JOB_ACCOUNT",
            Var::SlurmJobPartition => b"SLURM_JOB_PARTITION",
            Var::PbsJobid => b"PBS_JOBID",
            Var::LsbJobid => b"LSB_JOBID",
            Var::FluxJobId => b"FLUX_JOB_ID",
            Var::CondorJobAd => b"_CONDOR_JOB_AD",
            Var::ApptainerContainer => b"APPTAINER_CONTAINER",
            Var::SingularityContainer => b"SINGULARITY_CONTAINER",
        }
    }
}

/// What a process's environment says of its job: the `Var`s only, each cut to `MAX_VALUE`
/// bytes. Whatever the environment's size or shape, this is all that is kept of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    values: [Option<String>; Var::ALL.len()],
}

impl Env {
    /// The value of `var` (empty if unset).
    pub fn value(&self, var: Var) -> &str {
        self.values[var as usize].as_deref().unwrap_or("")
    }

    /// Read `NAME=value` entries separated by NUL from `r` through a buffer of `ENTRY_MAX`
    /// bytes: an entry longer than that is skipped whole; entries that are not UTF-8 or name no
    /// `Var` are skipped. The first of a name counts, as for getenv(3).
    pub fn read(mut r: impl std::io::Read) -> Env {
        let mut env = Env::default();
        let mut buf = vec![0u8; ENTRY_MAX];
        let (mut filled, mut skipping) = (0, false);
        loop {
            let n = match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            filled += n;
            let mut start = 0;
            while let Some(len) = buf[start..filled].iter().position(|&b| b == 0) {
                if !std::mem::take(&mut skipping) {
                    env.take(&buf[start..start + len]);
                }
                start += len + 1;
            }
            if start == 0 && filled == buf.len() {
                // One entry fills the buffer: drop it up to its end.
                (filled, skipping) = (0, true);
            } else {
                buf.copy_within(start..filled, 0);
                filled -= start;
            }
        }
        if !skipping {
            env.take(&buf[..filled]);
        }
        env
    }

    fn take(&mut self, entry: &[u8]) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            return;
        };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        let Some(var) = Var::ALL.into_iter().find(|v| v.name() == name) else {
            return;
        };
        let slot = &mut self.values[var as usize];
        if slot.is_some() {
            return;
        }
        let Ok(value) = std::str::from_utf8(value) else {
            return;
        };
        let mut end = value.len().min(MAX_VALUE);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        *slot = Some(value[..end].to_string());
    }
}

/// The environment process `pid` started with (its `/proc/<pid>/environ`, at most
/// `MAX_ENVIRON` bytes, through a small buffer); empty if unreadable. Read by pid: the caller
/// holds the process and checks it is still alive after.
pub fn environ(pid: i32) -> Env {
    match std::fs::File::open(format!("/proc/{pid}/environ")) {
        Ok(f) => Env::read(f.take(MAX_ENVIRON)),
        Err(_) => Env::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut bytes = Vec::new();
        for (k, v) in pairs {
            bytes.extend_from_slice(format!("{k}={v}\0").as_bytes());
        }
        Env::read(&bytes[..])
    }

    const ROOT: (u32, u32) = (0, 0);

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
            let job = Job::find(&[], &[env(&pairs)], ROOT);
            assert_eq!(
                (
                    job.scheduler.map_or("", Scheduler::as_str),
                    job.id.as_str(),
                    job.account.as_str(),
                    job.partition.as_str()
                ),
                (scheduler, id, account, partition),
                "{pairs:?}"
            );
            let source = (!id.is_empty()).then_some(JobSource::Environment);
            assert_eq!(job.source, source);
        }
        assert_eq!(Job::default().scheduler_label(), "none");
    }

    /// The state file spells a job as it did when these were strings.
    #[test]
    fn the_state_file_spells_a_job_as_before() {
        let job = Job {
            scheduler: Some(Scheduler::Slurm),
            id: "7".into(),
            source: Some(JobSource::Cgroup),
            ..Job::default()
        };
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(
            json,
            r#"{"scheduler":"slurm","id":"7","source":"cgroup","account":"","partition":"","image":""}"#
        );
        assert_eq!(serde_json::from_str::<Job>(&json).unwrap(), job);
        assert_eq!(
            serde_json::to_string(&Job::default()).unwrap(),
            r#"{"scheduler":"","id":"","source":"","account":"","partition":"","image":""}"#
        );
        for (scheduler, name) in Scheduler::ALL
            .iter()
            .zip(["slurm", "pbs", "lsf", "flux", "htcondor"])
        {
            assert_eq!(scheduler.as_str(), name);
            let text = format!(r#"{{"scheduler":"{name}","source":"environment"}}"#);
            let read: Job = serde_json::from_str(&text).unwrap();
            assert_eq!(
                (read.scheduler, read.source),
                (Some(*scheduler), Some(JobSource::Environment))
            );
        }
        // A name this daemon does not know, or none: unknown.
        let read: Job =
            serde_json::from_str(r#"{"scheduler":"moab","source":"elsewhere","id":"1"}"#).unwrap();
        assert_eq!(
            (read.scheduler, read.source, read.id.as_str()),
            (None, None, "1")
        );
        assert_eq!(serde_json::from_str::<Job>("{}").unwrap(), Job::default());
        assert_eq!(Job::default().scheduler_label(), "none");
        assert_eq!(job.scheduler_label(), "slurm");
    }

    #[test]
    fn htcondor_job_ad() {
        let tmp = tempfile::tempdir().unwrap();
        let ad = tmp.path().join(".job.ad");
        std::fs::write(&ad, "Owner = \"alice\"\nClusterId = 123\nProcId = 4\n").unwrap();
        let job = Job::find(
            &[],
            &[env(&[("_CONDOR_JOB_AD", ad.to_str().unwrap())])],
            ROOT,
        );
        assert_eq!(
            (job.scheduler, job.id.as_str()),
            (Some(Scheduler::Htcondor), "123.4")
        );
        // Another name, or a symlink to the ad, is not read.
        let other = tmp.path().join("shadow");
        std::fs::write(&other, "ClusterId = 1\nProcId = 2\n").unwrap();
        assert_eq!(htcondor_job(other.to_str().unwrap(), ROOT), None);
        let link_dir = tmp.path().join("l");
        std::fs::create_dir(&link_dir).unwrap();
        std::os::unix::fs::symlink(&other, link_dir.join(".job.ad")).unwrap();
        assert_eq!(
            htcondor_job(link_dir.join(".job.ad").to_str().unwrap(), ROOT),
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
            ROOT,
        );
        assert_eq!(job.id.len(), MAX_VALUE);
        assert_eq!(job.image, "/images/lolcow.sif");
        // Only the variables that name a job are kept; the first of a name counts; junk,
        // entries that are not UTF-8 and entries longer than the buffer are skipped.
        let e = Env::read(
            &b"A=1\0SLURM_JOB_ID=x=y\0junk\0\xff=1\0SLURM_JOB_ID=2\0PBS_JOBID=\xff\0LSB_JOBID=9"[..],
        );
        assert_eq!(e.value(Var::SlurmJobId), "x=y");
        assert_eq!(e.value(Var::PbsJobid), "");
        assert_eq!(e.value(Var::LsbJobid), "9");
        let mut big = b"FLUX_JOB_ID=".to_vec();
        big.extend(std::iter::repeat_n(b'f', ENTRY_MAX * 3));
        big.extend_from_slice(b"\0PBS_JOBID=12\0");
        let e = Env::read(&big[..]);
        assert_eq!(
            (e.value(Var::FluxJobId), e.value(Var::PbsJobid)),
            ("", "12")
        );
    }

    /// Read a byte at a time: entries that straddle reads are whole.
    #[test]
    fn environ_read_in_pieces() {
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = *first;
                self.0 = rest;
                Ok(1)
            }
        }
        let e = Env::read(Trickle(
            b"HOME=/x\0SLURM_JOB_ID=77\0APPTAINER_CONTAINER=/i.sif",
        ));
        assert_eq!(e.value(Var::SlurmJobId), "77");
        assert_eq!(e.value(Var::ApptainerContainer), "/i.sif");
    }
}
