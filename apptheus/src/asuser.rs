//! Reading a file that a user names, as that user.
//!
//! Root opens nothing by a path a user controls. Such a path is resolved and read by a thread
//! of its own that first takes the user's uid and gid, with no supplementary groups and so no
//! capabilities (Linux credentials belong to a thread; this thread ends after the read), and
//! opens it as `safefile` does (`O_NOCTTY | O_NOFOLLOW | O_NONBLOCK`): only a regular file is
//! read, bounded in size and in time. So what the user could not read, the daemon does not read for them; a
//! terminal or a device never becomes the daemon's; a read that hangs (a FUSE file the user
//! serves) costs one parked thread, and at most `MAX_IN_FLIGHT` of them exist at once.
use std::{
    io::Read as _,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use rustix::{
    process::{Gid, Uid},
    thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid},
};

use crate::safefile;

/// Reads that may be under way at once (finished or hung); past it a read is not tried.
const MAX_IN_FLIGHT: usize = 8;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Why a user's file was not read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{MAX_IN_FLIGHT} reads of users' files are under way already")]
    Busy,
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("cannot take the user's credentials: {0}")]
    Credentials(std::io::Error),
    #[error("cannot start a reader thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotAFile,
}

/// At most `max` bytes of the regular file `path`, opened and read with `uid`'s and `gid`'s
/// credentials (and no other group), within `timeout`.
pub fn read(
    uid: u32,
    gid: u32,
    path: PathBuf,
    max: u64,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    if IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(Error::Busy);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("as-user".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let res = read_here(uid, gid, &path, max);
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            // The caller may have stopped waiting.
            let _ = tx.send(res);
        });
    if let Err(e) = spawned {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(Error::Thread(e));
    }
    rx.recv_timeout(timeout)
        .map_err(|_| Error::TimedOut(timeout))?
}

/// On this thread, for good: become the user, then read.
fn read_here(uid: u32, gid: u32, path: &std::path::Path, max: u64) -> Result<Vec<u8>, Error> {
    // Groups and gid first: once the uid is not root's, they can no longer be changed.
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    set_thread_groups(&[]).map_err(|e| Error::Credentials(e.into()))?;
    set_thread_res_gid(gid, gid, gid).map_err(|e| Error::Credentials(e.into()))?;
    set_thread_res_uid(uid, uid, uid).map_err(|e| Error::Credentials(e.into()))?;
    let file = match safefile::open(path) {
        Ok(f) => f.into_file(),
        // The words these errors have always had: the path is the user's, left out of the log.
        Err(safefile::Error::Io { error, .. }) => return Err(Error::Io(error)),
        // `open` refuses nothing else than what is not a regular file.
        Err(_) => return Err(Error::NotAFile),
    };
    // Cut at `max`, not refused past it (`safefile::read`'s rule): what the caller looks for
    // may well be in the first `max` bytes.
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn reads_as_the_user_only_what_the_user_may_read() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run as root (cargo xtask test)"
        );
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = tmp.path().join("open");
        std::fs::write(&open, "ClusterId = 1\n").unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "root's").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read(65_534, 65_534, open.clone(), 1 << 20, T).unwrap(),
            b"ClusterId = 1\n"
        );
        assert_eq!(read(65_534, 65_534, open.clone(), 4, T).unwrap(), b"Clus");
        // Root could; the user cannot, so neither does the daemon for them.
        let err = read(65_534, 65_534, secret, 1 << 20, T).unwrap_err();
        assert!(
            matches!(err, Error::Io(ref e) if e.kind() == std::io::ErrorKind::PermissionDenied),
            "{err}"
        );
        // Not a regular file; a link is not followed.
        assert!(matches!(
            read(65_534, 65_534, "/dev/null".into(), 16, T),
            Err(Error::NotAFile)
        ));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(read(65_534, 65_534, link, 16, T).is_err());
        // The caller's own credentials are untouched.
        assert!(nix::unistd::geteuid().is_root());
    }

    #[test]
    fn a_fifo_nobody_writes_is_no_hang() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run as root (cargo xtask test)"
        );
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            read(65_534, 65_534, fifo, 16, T),
            Err(Error::NotAFile)
        ));
    }
}
