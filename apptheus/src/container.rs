//! Who a container is: fixed at admission, then the same everywhere: the labels of its series,
//! the fields of its log lines, and its entry in the state file.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::job::Job;

/// A container's identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// `<exe basename>_<launcher pid>`, as the Go Apptheus named it.
    pub id: String,
    /// Its cgroup path below the root of the primary hierarchy.
    pub cgroup: String,
    /// The `cgroup` label: `cgroup`, with uids in it hashed under `--privacy.hash-salt-file`.
    /// Not saved: a restart makes it again from `cgroup`.
    #[serde(skip)]
    pub cgroup_label: String,
    /// The launcher's user name, or its uid when it has none; with
    /// `--privacy.hash-salt-file`, its keyed hash (`privacy`).
    pub user: String,
    /// The launcher's uid, or its keyed hash. A number in state files of earlier versions.
    #[serde(deserialize_with = "uid_text")]
    pub uid: String,
    /// The launcher's pid.
    pub pid: i32,
    /// The basename of the launcher's executable.
    pub exe: String,
    /// The launcher's executable as /proc/<pid>/exe named it.
    pub exe_path: String,
    /// Unix seconds of the admission.
    pub start_time: f64,
    /// The batch job it belongs to (state files of earlier versions have none).
    #[serde(default)]
    pub job: Job,
    /// The launcher's real uid, as a number even under `--privacy.hash-salt-file`: who may see
    /// the container through the query socket. Never published (no label, log field or
    /// answer shows it); kept in the state file (root's) so a restart keeps it. `None` in
    /// state files of earlier versions: such a container is shown to root and admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
}

impl Identity {
    /// The identity of a container still being admitted: its id and (published) uid only.
    pub fn pending(id: String, uid: String) -> Identity {
        Identity {
            id,
            cgroup: String::new(),
            cgroup_label: String::new(),
            user: String::new(),
            uid,
            pid: 0,
            exe: String::new(),
            exe_path: String::new(),
            start_time: 0.0,
            job: Job::default(),
            owner: None,
        }
    }

    /// The id and exe basename of a launcher.
    pub fn id_of(exe_path: &Path, pid: i32) -> (String, String) {
        let exe = exe_basename(exe_path);
        (format!("{exe}_{pid}"), exe)
    }
}

/// A uid as text: state files before the privacy flag stored it as a number.
fn uid_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Uid {
        Number(u32),
        Text(String),
    }
    Ok(match Uid::deserialize(d)? {
        Uid::Number(n) => n.to_string(),
        Uid::Text(t) => t,
    })
}

/// The launcher pid at the end of a container id (`<exe>_<pid>`).
pub fn pid_of_id(id: &str) -> Option<i32> {
    let (exe, digits) = id.rsplit_once('_')?;
    let pid: i32 = digits.parse().ok()?;
    // Only the daemon's own spelling: no sign, no leading zeros.
    (!exe.is_empty() && pid > 0 && pid.to_string() == digits).then_some(pid)
}

/// The user name of `uid`, or the uid itself when it has none.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

pub use apptheus_api::time::{from_unix_seconds, unix_seconds};

fn exe_basename(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into());
    name.strip_suffix(" (deleted)")
        .map(str::to_owned)
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basenames() {
        assert_eq!(
            exe_basename(Path::new("/usr/libexec/apptainer/bin/starter-suid")),
            "starter-suid"
        );
        assert_eq!(
            exe_basename(Path::new("/opt/x/apptheus-exec (deleted)")),
            "apptheus-exec"
        );
        assert_eq!(exe_basename(Path::new("/")), "unknown");
        assert_eq!(
            Identity::id_of(Path::new("/bin/starter"), 42),
            ("starter_42".to_string(), "starter".to_string())
        );
    }

    #[test]
    fn ids() {
        assert_eq!(pid_of_id("starter-suid_4242"), Some(4242));
        assert_eq!(pid_of_id("a_b_7"), Some(7));
        for bad in [
            "4242",
            "_4242",
            "x_",
            "x_+1",
            "x_012",
            "x_-1",
            "x_0",
            "x_99999999999",
        ] {
            assert_eq!(pid_of_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn user_names() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "4000000000");
    }

    #[test]
    fn uids_of_earlier_state_files_are_numbers() {
        let json = |uid: &str| {
            format!(
                r#"{{"id":"x_1","cgroup":"/apptheus/x_1","user":"alice","uid":{uid},"pid":1,"exe":"x","exe_path":"/x","start_time":1.0}}"#
            )
        };
        let old: Identity = serde_json::from_str(&json("1000")).unwrap();
        assert_eq!(old.uid, "1000");
        let hashed: Identity = serde_json::from_str(&json(r#""u-c8ef2e4faf46278c""#)).unwrap();
        assert_eq!(hashed.uid, "u-c8ef2e4faf46278c");
        // Written as text from now on.
        assert!(
            serde_json::to_string(&old)
                .unwrap()
                .contains(r#""uid":"1000""#)
        );
    }
}
