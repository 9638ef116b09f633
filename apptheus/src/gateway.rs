//! The launchers' unix socket and the trust decision.
//!
//! A launcher connects and holds the connection. The peer is identified by SO_PEERCRED and held
//! by a pidfd taken at once; it is trusted only when `/proc/<pid>/exe` names a trusted path *and*
//! is the very file at that path now (same device and inode), and the pidfd still shows the
//! process alive after that decision, so a pid reused in between is never trusted.
use std::{
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use tokio::net::{UnixListener, UnixStream};

use crate::tracker::{has_exited, pidfd_open};

/// Why a connection was refused; the `reason` label of `apptheus_gateway_rejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The peer's executable is not one of `--trust.path`.
    Untrusted,
    /// The peer runs a trusted path, but not the file now at that path (replaced or deleted).
    Replaced,
    /// The peer exited before the decision.
    Vanished,
    /// The peer already belongs to a monitored container.
    Nested,
    /// `--gateway.max-containers` live containers exist already.
    Limit,
    /// The daemon failed to set the container up (see its log).
    Error,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::Untrusted,
        Rejection::Replaced,
        Rejection::Vanished,
        Rejection::Nested,
        Rejection::Limit,
        Rejection::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Untrusted => "untrusted",
            Rejection::Replaced => "replaced",
            Rejection::Vanished => "vanished",
            Rejection::Nested => "nested",
            Rejection::Limit => "limit",
            Rejection::Error => "error",
        }
    }
}

/// A connected launcher, identified.
#[derive(Debug)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// What `/proc/<pid>/exe` resolved to (" (deleted)" included, if so).
    pub exe_path: PathBuf,
    /// Holds the peer process: valid as long as we keep it, whatever happens to the pid.
    pub pidfd: Option<OwnedFd>,
}

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
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
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
    fn check(&self, pid: i32, exe: &Path) -> Result<(), Rejection> {
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

/// The first of `path` and its ancestors that a non-root user could write to.
fn writable_by_others(path: &Path) -> Option<PathBuf> {
    path.ancestors().find_map(|p| {
        let m = std::fs::metadata(p).ok()?;
        let mode = m.permissions().mode();
        // Sticky directories (/tmp) still let others create, but not replace, entries.
        let sticky_dir = m.is_dir() && mode & 0o1000 != 0;
        let unsafe_mode = m.uid() != 0 || (mode & 0o022 != 0 && !sticky_dir);
        unsafe_mode.then(|| p.to_path_buf())
    })
}

/// The listening socket. Removes its file when dropped.
pub struct Gateway {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

impl Gateway {
    /// Listen on `path`: create its directory (0755) if missing, replace a stale socket there
    /// (never a regular file or a symlink), and open it to everyone (0777) as Apptainer's
    /// unprivileged side needs.
    pub fn bind(path: &Path) -> Result<Gateway> {
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod 0755 {}", dir.display()))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?,
            Ok(m) => bail!(
                "{} exists and is not a socket ({}); refusing to replace it",
                path.display(),
                if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "a file or directory"
                }
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
            .with_context(|| format!("chmod 0777 {}", path.display()))?;
        let ino = std::fs::metadata(path)?.ino();
        Ok(Gateway {
            listener,
            path: path.to_path_buf(),
            ino,
        })
    }

    pub async fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Remove the file only if it is still ours (another daemon may have replaced it).
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Identify the peer of `stream` and decide whether it is trusted. Blocking (reads /proc).
/// On refusal the peer is returned too, for the log, when it could be identified.
pub fn identify(stream: &UnixStream, trust: &Trust) -> Result<Peer, (Rejection, Option<Peer>)> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|_| (Rejection::Error, None))?;
    let mut peer = Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        exe_path: PathBuf::new(),
        pidfd: None,
    };
    peer.pidfd = match peer_pidfd(stream, peer.pid) {
        Ok(Some(fd)) => Some(fd),
        Ok(None) => return Err((Rejection::Vanished, Some(peer))),
        Err(_) => return Err((Rejection::Error, Some(peer))),
    };
    peer.exe_path = match std::fs::read_link(format!("/proc/{}/exe", peer.pid)) {
        Ok(p) => p,
        Err(_) => return Err((Rejection::Vanished, Some(peer))),
    };
    if let Err(r) = trust.check(peer.pid, &peer.exe_path) {
        return Err((r, Some(peer)));
    }
    test_hook_before_final_check();
    // The decision was about whatever process had that pid; confirm it is still the peer.
    match peer.pidfd.as_ref().map(has_exited) {
        Some(Ok(false)) => Ok(peer),
        _ => Err((Rejection::Vanished, Some(peer))),
    }
}

/// A pidfd of the peer: SO_PEERPIDFD (Linux 6.5+) names the very process that connected; older
/// kernels fall back to pidfd_open on the SO_PEERCRED pid.
fn peer_pidfd(stream: &UnixStream, pid: i32) -> Result<Option<OwnedFd>> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid socket fd and out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &mut len,
        )
    };
    if rc == 0 && fd >= 0 {
        // SAFETY: the kernel returned a new fd owned by us.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // The peer is already gone.
        Some(libc::ESRCH) => Ok(None),
        Some(libc::ENOPROTOOPT) | Some(libc::EINVAL) => pidfd_open(pid),
        _ => Err(err).context("getsockopt(SO_PEERPIDFD)"),
    }
}

/// Test hook: with `APPTHEUS_TEST_DECISION_DELAY_MS` set, wait between the exe check and the
/// final liveness check, so a test can make the peer die exactly there.
fn test_hook_before_final_check() {
    use std::sync::OnceLock;
    static DELAY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("APPTHEUS_TEST_DECISION_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_labels_are_distinct() {
        let mut labels: Vec<_> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Rejection::ALL.len());
    }

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
