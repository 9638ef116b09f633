//! The trusted launchers: which executables may become containers, and the decision about one
//! peer's executable.
use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use crate::fsperm::writable_by_others;
use crate::launcher::Rejection;

/// The trusted launcher executables.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    paths: Vec<PathBuf>,
}

impl Trust {
    /// Check the entries as an administrator would want at start: each must be absolute, a
    /// regular file, and writable by no one but root (the file and every directory above it),
    /// or anyone could swap the binary. A missing entry is fine (Apptainer may be installed
    /// later) and is returned as a warning.
    pub fn new(paths: &[PathBuf]) -> Result<(Trust, Vec<String>)> {
        let mut warnings = Vec::new();
        for p in paths {
            if !p.is_absolute() {
                bail!("--trust.path entry {} is not an absolute path", p.display());
            }
            match std::fs::metadata(p) {
                // Apptainer may be installed later; whoever can write the directories that do
                // exist could put a launcher of their own there first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(bad) = writable_by_others(p) {
                        bail!(
                            "--trust.path entry {} is unsafe: it does not exist, and {} is writable by a user other than root",
                            p.display(),
                            bad.display()
                        );
                    }
                    warnings.push(format!(
                        "trusted launcher {} does not exist (yet)",
                        p.display()
                    ));
                    continue;
                }
                Err(e) => bail!("--trust.path entry {}: {e}", p.display()),
                Ok(m) if !m.is_file() => {
                    bail!("--trust.path entry {} is not a regular file", p.display())
                }
                Ok(_) => {}
            }
            if let Some(bad) = writable_by_others(p) {
                bail!(
                    "--trust.path entry {} is unsafe: {} is writable by a user other than root",
                    p.display(),
                    bad.display()
                );
            }
        }
        Ok((
            Trust {
                paths: paths.to_vec(),
            },
            warnings,
        ))
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The decision for an exe link target: Ok if trusted.
    pub(super) fn check(&self, pid: i32, exe: &Path) -> Result<(), Rejection> {
        let text = exe.to_string_lossy();
        let (path, deleted) = match text.strip_suffix(" (deleted)") {
            Some(p) => (Path::new(p), true),
            None => (exe, false),
        };
        // An entry may be a symlink (/bin -> /usr/bin); the exe link is always the resolved path.
        let Some(trusted) = self
            .paths
            .iter()
            .find(|t| *t == path || std::fs::canonicalize(t).is_ok_and(|c| c == path))
        else {
            return Err(Rejection::Untrusted);
        };
        if deleted {
            return Err(Rejection::Replaced);
        }
        // The exe link follows to the inode the process runs; the path may hold another file now.
        let running =
            std::fs::metadata(format!("/proc/{pid}/exe")).map_err(|_| Rejection::Vanished)?;
        let on_disk = std::fs::metadata(trusted).map_err(|_| Rejection::Replaced)?;
        if (running.dev(), running.ino()) != (on_disk.dev(), on_disk.ino()) {
            return Err(Rejection::Replaced);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn trust_refuses_relative_and_non_files_and_warns_on_missing() {
        let err = Trust::new(&[PathBuf::from("bin/starter")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an absolute path"), "{err}");
        let err = Trust::new(&[PathBuf::from("/usr")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let (_, warnings) = Trust::new(&[PathBuf::from("/nonexistent/apptheus-launcher")]).unwrap();
        assert_eq!(warnings.len(), 1);
        let (t, warnings) = Trust::new(&[PathBuf::from("/bin/sh")]).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(t.paths(), [PathBuf::from("/bin/sh")]);
    }

    #[test]
    fn trust_refuses_files_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("launcher");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Trust::new(std::slice::from_ref(&f))
            .unwrap_err()
            .to_string();
        assert!(err.contains("writable by a user other than root"), "{err}");
    }

    #[test]
    fn trust_refuses_a_missing_file_that_others_could_create() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let missing = dir.path().join("libexec/starter");
        let err = Trust::new(&[missing]).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("writable by a user other than root"), "{err}");
    }

    #[test]
    fn exe_check() {
        let t = Trust {
            paths: vec![PathBuf::from("/usr/libexec/apptainer/bin/starter")],
        };
        let me = std::process::id() as i32;
        assert_eq!(
            t.check(me, Path::new("/usr/bin/other")),
            Err(Rejection::Untrusted)
        );
        assert_eq!(
            t.check(
                me,
                Path::new("/usr/libexec/apptainer/bin/starter (deleted)")
            ),
            Err(Rejection::Replaced)
        );
        assert_eq!(
            t.check(me, Path::new("/usr/libexec/apptainer/bin/starter.old")),
            Err(Rejection::Untrusted)
        );
    }
}
