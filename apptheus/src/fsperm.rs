//! Whether a path is root's alone: what the daemon trusts on disk (launchers, its state, its
//! socket's directory) must not be replaceable by another user.
use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// The first of `path` and its existing ancestors that a user other than root could write to
/// (or that root does not own). A path that does not exist yet is judged by the ancestors that
/// do: whoever can write those can create it.
pub fn writable_by_others(path: &Path) -> Option<PathBuf> {
    path.ancestors().find_map(|p| {
        let m = std::fs::metadata(p).ok()?;
        let mode = m.permissions().mode();
        // Sticky directories (/tmp) still let others create, but not replace, entries.
        let sticky_dir = m.is_dir() && mode & 0o1000 != 0;
        let unsafe_mode = m.uid() != 0 || (mode & 0o022 != 0 && !sticky_dir);
        unsafe_mode.then(|| p.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_writable_paths_and_their_missing_children() {
        assert_eq!(writable_by_others(Path::new("/usr/bin/env")), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let missing = dir.path().join("a/b/launcher");
        assert_eq!(writable_by_others(&missing).as_deref(), Some(dir.path()));
    }
}
