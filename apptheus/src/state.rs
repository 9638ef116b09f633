//! The state file: what a restarted daemon needs to re-adopt the containers a previous run left
//! (their labels and start time; the cgroup tree itself says which still exist and what they
//! hold). One JSON file under `--state.dir`, replaced atomically, and a lock so that two daemons
//! never share it.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{
    container::{Identity, from_unix_seconds},
    fsperm::writable_by_others,
    safefile,
};

/// The file's name inside `--state.dir`.
pub const FILE_NAME: &str = "containers.json";
const LOCK_NAME: &str = "lock";
const VERSION: u32 = 1;
/// A state file larger than this is not ours (the limit of containers times a generous entry).
const MAX_BYTES: u64 = 64 << 20;
/// Longest container cgroup path an entry may hold: a launcher's (bounded at admission) with
/// the parent and the id below it.
const MAX_CGROUP: usize = crate::cgroup::MAX_CGROUP_PATH + 2 * 256;

/// One container as a previous run knew it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedContainer {
    #[serde(flatten)]
    pub identity: Identity,
    /// Unix seconds, for containers that had ended.
    #[serde(default)]
    pub end_time: Option<f64>,
    /// The `<parent>` directories that making this container made (removed with it when
    /// empty). Only ever compared with the directories the cgroup tree shows.
    #[serde(default)]
    pub made_parents: Vec<PathBuf>,
    /// The directories that were the launcher's own cgroup, taken as they were: never removed.
    #[serde(default)]
    pub adopted: Vec<PathBuf>,
}

/// A document as read: its entries are taken one by one (see `parse`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Read {
    version: u32,
    containers: Vec<serde_json::Value>,
}

/// Parse a state file's bytes. Every entry is checked, so that nothing in it can make the daemon
/// touch a path outside the cgroup tree or export a malformed label. An entry that is not valid
/// is skipped (and logged): one container's entry never costs the others theirs.
pub fn parse(bytes: &[u8]) -> Result<Vec<SavedContainer>> {
    let doc: Read = serde_json::from_slice(bytes).context("not a valid state document")?;
    if doc.version != VERSION {
        bail!(
            "state file version {} (this daemon writes version {VERSION})",
            doc.version
        );
    }
    Ok(doc
        .containers
        .into_iter()
        .enumerate()
        .filter_map(|(i, value)| match entry(value) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(entry = i, error = %format!("{e:#}"), "state file entry unusable: skipped");
                None
            }
        })
        .collect())
}

/// One entry of the state file, checked.
fn entry(value: serde_json::Value) -> Result<SavedContainer> {
    let c: SavedContainer = serde_json::from_value(value).context("not a container entry")?;
    check(&c).with_context(|| format!("container {:?}", c.identity.id))?;
    Ok(c)
}

/// Render the state file's bytes (the inverse of `parse`; the daemon streams it, see `write`).
#[cfg(any(test, feature = "fuzzing"))]
pub fn render(containers: &[SavedContainer]) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = write(&mut bytes, containers);
    bytes
}

/// Write the state document to `out` one entry at a time: at 10,000 containers the whole
/// document is megabytes, never held in memory.
fn write(mut out: impl Write, containers: &[SavedContainer]) -> io::Result<()> {
    write!(out, "{{\"version\":{VERSION},\"containers\":[")?;
    for (i, c) in containers.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        // Non-finite floats would become null, which `parse` refuses: replaced first.
        let clean = c.identity.start_time.is_finite() && c.end_time.is_none_or(f64::is_finite);
        if clean {
            serde_json::to_writer(&mut out, c)?;
        } else {
            let mut c = c.clone();
            if !c.identity.start_time.is_finite() {
                c.identity.start_time = 0.0;
            }
            c.end_time = c.end_time.filter(|t| t.is_finite());
            serde_json::to_writer(&mut out, &c)?;
        }
    }
    out.write_all(b"]}")?;
    out.flush()
}

fn check(saved: &SavedContainer) -> Result<()> {
    let c = &saved.identity;
    let plain_name = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0', '\n']) && s.len() <= 255
    };
    if !plain_name(&c.id) {
        bail!("bad id");
    }
    // A container's own cgroup ends in its id; one that is the launcher's own cgroup (adopted)
    // has the name the batch system gave it.
    let parts: Vec<&str> = c.cgroup.split('/').collect();
    if !c.cgroup.starts_with('/')
        || c.cgroup.len() > MAX_CGROUP
        || c.cgroup.chars().any(char::is_control)
        || parts.iter().skip(1).any(|p| !plain_name(p))
        || (saved.adopted.is_empty() && parts.last() != Some(&c.id.as_str()))
    {
        bail!("bad cgroup path {:?}", c.cgroup);
    }
    let absolute_plain = |p: &PathBuf| {
        p.as_os_str().len() <= 4096
            && !p.to_string_lossy().chars().any(char::is_control)
            && p.is_absolute()
            && p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            })
    };
    if saved.adopted.len() + saved.made_parents.len() > 64
        || !saved
            .adopted
            .iter()
            .chain(&saved.made_parents)
            .all(absolute_plain)
    {
        bail!("bad directory");
    }
    if c.pid <= 0 {
        bail!("bad pid {}", c.pid);
    }
    // A time no clock can hold would make no sense as a label, and must not reach arithmetic
    // that could overflow.
    let time_ok = |t: f64| from_unix_seconds(t).is_some();
    if !time_ok(c.start_time) || saved.end_time.is_some_and(|t| !time_ok(t)) {
        bail!("bad time");
    }
    Ok(())
}

/// The state directory, locked for this daemon.
pub struct StateDir {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl StateDir {
    /// Create `dir` (0700) if needed and lock it; fails if another daemon holds it.
    pub fn open(dir: &Path) -> Result<StateDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating --state.dir {}", dir.display()))?;
        // Its files are opened without following links, and nobody but root may change it or
        // what leads to it.
        let meta = fs::symlink_metadata(dir)
            .with_context(|| format!("inspecting --state.dir {}", dir.display()))?;
        if !meta.is_dir() {
            bail!("--state.dir {} is not a directory (a link?)", dir.display());
        }
        if let Some(bad) = writable_by_others(dir) {
            bail!(
                "--state.dir {} is unsafe: {} is writable by a user other than root",
                dir.display(),
                bad.display()
            );
        }
        if meta.mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 0700 --state.dir {}", dir.display()))?;
        }
        let lock_path = dir.join(LOCK_NAME);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!(
                "--state.dir {} is in use by another apptheus ({e}); give each daemon its own",
                dir.display()
            )
        })?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The containers a previous run saved. A missing file is an empty list; an unreadable,
    /// corrupt or truncated one is reported, renamed aside (`<file>.corrupt-<unix time>`) and
    /// read as empty: it must never keep the daemon from starting.
    pub fn load(&self) -> Vec<SavedContainer> {
        let path = self.file();
        let bytes = match read_bounded(&path) {
            Ok(Some(b)) => b,
            Ok(None) => return Vec::new(),
            Err(e) => {
                self.set_aside(&path, &format!("{e:#}"));
                return Vec::new();
            }
        };
        match parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                self.set_aside(&path, &format!("{e:#}"));
                Vec::new()
            }
        }
    }

    fn set_aside(&self, path: &Path, why: &str) {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let aside = self.dir.join(format!("{FILE_NAME}.corrupt-{secs}"));
        match fs::rename(path, &aside) {
            Ok(()) => {
                tracing::warn!(
                    file = path.display().to_string().as_str(),
                    moved_to = aside.display().to_string().as_str(),
                    error = why,
                    "state file unusable: set aside, starting without it"
                )
            }
            Err(e) => {
                tracing::warn!(file = path.display().to_string().as_str(), error = why, rename_error = %e, "state file unusable and cannot be set aside; starting without it")
            }
        }
    }

    /// Replace the state file atomically: write a temporary file, sync it, rename it over the
    /// old one, sync the directory. A crash at any point leaves the old file or the new one.
    pub fn save(&self, containers: &[SavedContainer]) -> Result<()> {
        let path = self.file();
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            let mut out = io::BufWriter::new(&mut f);
            write(&mut out, containers)?;
            drop(out);
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write()
            .with_context(|| format!("writing the state file {}", path.display()))
            .inspect_err(|_| {
                // What a full filesystem let through of it: its space back; the old file stands.
                let _ = fs::remove_file(&tmp);
            })
    }
}

/// The file's bytes, `None` if it does not exist.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>> {
    match safefile::read(path, MAX_BYTES) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e @ safefile::Error::Io { .. }) => Err(e.into()),
        // The words the set-aside log line has always given (it names the file itself).
        Err(safefile::Error::NotAFile { .. } | safefile::Error::TooLarge { .. }) => {
            bail!("not a regular file of at most {MAX_BYTES} bytes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> SavedContainer {
        SavedContainer {
            identity: Identity {
                id: id.into(),
                cgroup: format!("/slurm/job_1/apptheus/{id}"),
                // Not saved.
                cgroup_label: String::new(),
                user: "alice".into(),
                uid: "1000".into(),
                pid: 4242,
                exe: "starter-suid".into(),
                exe_path: "/usr/libexec/apptainer/bin/starter-suid".into(),
                start_time: 1_700_000_000.25,
                job: Default::default(),
                owner: None,
            },
            end_time: None,
            made_parents: vec!["/sys/fs/cgroup/memory/slurm/job_1/apptheus".into()],
            adopted: vec![],
        }
    }

    #[test]
    fn round_trip() {
        let mut ended = entry("b_2");
        ended.end_time = Some(1_700_000_100.5);
        let list = vec![entry("starter-suid_4242"), ended];
        assert_eq!(parse(&render(&list)).unwrap(), list);
        assert_eq!(parse(&render(&[])).unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_is_not_ours() {
        let bad = |text: &str| parse(text.as_bytes()).unwrap_err().to_string();
        assert!(bad("").contains("not a valid"));
        assert!(bad(r#"{"version":1,"containers":[{"id":"#).contains("not a valid"));
        assert!(bad(r#"{"version":2,"containers":[]}"#).contains("version 2"));
        assert!(bad(r#"{"version":1,"containers":[],"x":1}"#).contains("not a valid"));
        let with = |f: &dyn Fn(&mut SavedContainer)| {
            let mut c = entry("a_1");
            f(&mut c);
            let mut text = String::from_utf8(render(&[c])).unwrap();
            // render() cleans times; put a bad one back by hand where the test needs it.
            text = text.replace("\"start_time\":0.0", "\"start_time\":null");
            // A bad entry is skipped, not fatal.
            let mut entries = parse(text.as_bytes()).unwrap();
            entries.pop().ok_or(())
        };
        assert!(with(&|c| c.identity.cgroup = "/x/../../etc/a_1".into()).is_err());
        assert!(with(&|c| c.identity.cgroup = "relative/a_1".into()).is_err());
        assert!(with(&|c| c.identity.cgroup = "/x/other".into()).is_err());
        // The launcher's own cgroup, adopted: its path need not end in the id.
        assert!(
            with(&|c| {
                c.identity.cgroup = "/slurm/job_1/step_0/task_0".into();
                c.adopted = vec!["/sys/fs/cgroup/memory/slurm/job_1/step_0/task_0".into()];
            })
            .is_ok()
        );
        assert!(with(&|c| c.adopted = vec!["relative".into()]).is_err());
        assert!(with(&|c| c.made_parents = vec!["/a/../b".into()]).is_err());
        assert!(with(&|c| c.identity.id = "..".into()).is_err());
        assert!(with(&|c| c.identity.pid = 0).is_err());
        assert!(with(&|c| c.identity.start_time = f64::NAN).is_err());
        assert!(with(&|c| c.identity.start_time = 1e300).is_err());
        assert!(with(&|c| c.end_time = Some(-5.0)).is_err());
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|c| c.identity.cgroup = format!("/{}/a_1", "x".repeat(2000))).is_err());
        assert!(with(&|c| c.identity.cgroup = "/x\u{1b}[31m/a_1".into()).is_err());
    }

    /// One entry no daemon would write (a user-made path with a line break, say) costs only
    /// itself: the other containers keep their identities across a restart.
    #[test]
    fn a_bad_entry_is_skipped_and_the_others_kept() {
        let mut bad = entry("b_2");
        bad.identity.cgroup = "/user/x\ny/apptheus/b_2".into();
        let text = render(&[entry("a_1"), bad, entry("c_3")]);
        let ids: Vec<String> = parse(&text)
            .unwrap()
            .into_iter()
            .map(|c| c.identity.id)
            .collect();
        assert_eq!(ids, ["a_1", "c_3"]);
    }

    #[test]
    fn a_state_dir_others_can_write_or_a_link_is_refused_and_a_wide_one_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::open(&open.join("state"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("writable by a user other than root"), "{err}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        let err = StateDir::open(&link).err().unwrap().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let wide = tmp.path().join("wide");
        fs::create_dir(&wide).unwrap();
        fs::set_permissions(&wide, fs::Permissions::from_mode(0o755)).unwrap();
        let _s = StateDir::open(&wide).unwrap();
        assert_eq!(fs::metadata(&wide).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn save_load_lock_and_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let s = StateDir::open(&dir).unwrap();
        assert_eq!(s.load(), vec![]);
        let list = vec![entry("a_1")];
        s.save(&list).unwrap();
        assert_eq!(s.load(), list);
        // A second daemon on the same directory is refused.
        let err = StateDir::open(&dir).err().expect("locked").to_string();
        assert!(err.contains("in use"), "{err}");
        // A truncated file is set aside, not fatal.
        let full = fs::read(s.file()).unwrap();
        fs::write(s.file(), &full[..full.len() / 2]).unwrap();
        assert_eq!(s.load(), vec![]);
        assert!(!s.file().exists());
        let aside: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(fs::read(aside[0].path()).unwrap(), &full[..full.len() / 2]);
        drop(s);
        // Released with the daemon.
        assert!(StateDir::open(&dir).is_ok());
    }
}
