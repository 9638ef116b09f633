//! The launchers' unix socket: accept, identify, admit, hold, disconnect.
//!
//! A launcher connects and holds the connection for its container's life. Each connection is
//! identified (`peer`), checked against the trusted executables (`trust`), and made a container
//! by the registry; a refused one is closed at once, with nothing created for it.
mod peer;
mod refusals;
mod trust;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Result;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use self::refusals::Refusals;
pub use self::trust::Trust;
use crate::{
    accept::{Accepted, Acceptor, Slot, SocketFile},
    descriptors::{self, Room},
    launcher::{Peer, Rejection},
    metrics::Metrics,
    registry::{AdmitError, Admitted, Registry},
    tracker,
};

/// Connections being identified at once; more wait in the kernel's listen backlog, so a flood
/// costs bounded memory.
pub(crate) const MAX_PENDING_CONNECTIONS: usize = 16;

impl From<AdmitError> for Rejection {
    fn from(e: AdmitError) -> Rejection {
        match e {
            AdmitError::Limit(_) => Rejection::Limit,
            AdmitError::Descriptors { .. } => Rejection::Descriptors,
            AdmitError::Tracker(tracker::Error::AlreadyTracked { .. }) => Rejection::Nested,
            AdmitError::Tracker(tracker::Error::Exited { .. }) => Rejection::Vanished,
            AdmitError::Tracker(_) | AdmitError::Cgroup(_) => Rejection::Error,
        }
    }
}

/// The listening socket. Removes its file when dropped.
pub struct Gateway {
    socket: SocketFile,
}

impl Gateway {
    /// Listen on `path` (see `SocketFile::bind`), open to everyone as Apptainer's
    /// unprivileged side needs.
    pub fn bind(path: &Path) -> Result<Gateway> {
        Ok(Gateway {
            socket: SocketFile::bind(path, "--socket.path", 0o777)?,
        })
    }

    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Serve launchers until `shutdown`, then remove the socket: each connection is
    /// identified and admitted on a blocking thread (at most `MAX_PENDING_CONNECTIONS` at once;
    /// more wait in the kernel's listen backlog), then held until it closes.
    pub async fn serve(
        self,
        trust: Trust,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let refusals = Refusals::new(registry.privacy().clone());
        let admission = Arc::new(Admission {
            trust,
            registry,
            metrics,
            refusals,
            admitting: tokio::sync::Semaphore::new(MAX_PENDING_CONNECTIONS),
            per_user: Default::default(),
        });
        let acceptor = Acceptor::new(
            self.socket,
            MAX_PENDING_CONNECTIONS,
            shutdown.clone(),
            "a launcher connection",
        );
        while let Some(Accepted { stream, slot, .. }) = acceptor.next().await {
            // The next launchers wait in the listen backlog while admissions under way hold
            // the room.
            let room = tokio::select! {
                room = descriptors::room_for_connection() => room,
                _ = shutdown.cancelled() => break,
            };
            tokio::spawn(
                admission
                    .clone()
                    .connection(stream, slot, room, shutdown.clone()),
            );
        }
        Ok(())
    }
}

/// What a connection needs to become a container.
struct Admission {
    trust: Trust,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    refusals: Refusals,
    /// Admissions under way at once (blocking: cgroup files, a /proc walk), taken in order.
    admitting: tokio::sync::Semaphore,
    /// Per uid, its admissions under way or queued for `admitting`: at most
    /// `ADMITTING_PER_USER` of them queue there, so another user's launcher waits behind a few
    /// of a job array's, not all of them.
    per_user: parking_lot::Mutex<std::collections::HashMap<u32, Arc<tokio::sync::Semaphore>>>,
}

/// A user's admissions under way (or queued for one of the `MAX_PENDING_CONNECTIONS`) at once.
const ADMITTING_PER_USER: usize = 4;

impl Admission {
    /// One connection, from accept to close: identified and decided under its accept slot,
    /// then it waits for its user's turn (holding no slot: other users' launchers go by), then
    /// it is admitted and held.
    async fn connection(
        self: Arc<Self>,
        stream: UnixStream,
        slot: Slot,
        room: Room,
        shutdown: CancellationToken,
    ) {
        let this = self.clone();
        let identified = tokio::task::spawn_blocking(move || {
            let peer = this.identify(&stream);
            (stream, peer)
        })
        .await;
        // Identified: the next peer may be.
        drop(slot);
        let Ok((stream, peer)) = identified else {
            return;
        };
        // Past the budget the container is refused, rather than the node's other descriptors
        // (HTTP, files) run out; it is identified first, so that the refusal names its user.
        let admitted = match (peer, room) {
            (Ok(peer), Room::Spent) => Err(self.refuse(
                &peer,
                AdmitError::Descriptors {
                    held: descriptors::firm(),
                    shared: descriptors::shared(),
                    limit: descriptors::limit(),
                },
            )),
            // Boxed: the admission's future is large and over once admitted; the task then
            // holds only the connection (10,000 of them at once).
            (Ok(peer), Room::Accept(lease)) => Box::pin(self.clone().admit(peer, &shutdown))
                .await
                .map(|admitted| (admitted, lease)),
            (Err(reason), _) => Err(reason),
        };
        match admitted {
            Ok((admitted, mut connection)) => {
                // The peer's pidfd went with the admission; the connection stays.
                connection.settle();
                self.metrics.accepted();
                let id = &admitted.identity;
                tracing::info!(
                    container = id.id.as_str(),
                    pid = id.pid,
                    uid = id.uid.as_str(),
                    "launcher connection accepted"
                );
                if hold(stream, &admitted, &shutdown).await {
                    self.registry.disconnected(admitted.key);
                }
            }
            // Logged where it was decided; dropping the stream closes the connection at once.
            Err(reason) => self.metrics.rejected(reason),
        }
    }

    /// Identify the peer and decide whether it is trusted (blocking).
    fn identify(&self, stream: &UnixStream) -> Result<Peer, Rejection> {
        let peer = Peer::identify(stream, &self.refusals)?;
        peer.verify(&self.trust, &self.refusals)?;
        Ok(peer)
    }

    /// Wait for the trusted peer's turn under its user's admission rate, then make it a
    /// container. A peer that exits meanwhile is refused as vanished by the admission.
    async fn admit(
        self: Arc<Self>,
        peer: Peer,
        shutdown: &CancellationToken,
    ) -> Result<Admitted, Rejection> {
        let wait = self
            .registry
            .admission_turn(peer.uid)
            .map_err(|e| self.refuse(&peer, e))?;
        if !wait.is_zero() {
            tracing::debug!(
                pid = peer.pid,
                wait_seconds = wait.as_secs_f64(),
                "launcher waits for its user's admission turn"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Err(Rejection::Error),
            }
        }
        self.metrics.admission_waited(wait);
        let users = self.user_gate(peer.uid);
        let (Ok(_user), Ok(_permit)) = (users.acquire().await, self.admitting.acquire().await)
        else {
            return Err(Rejection::Error);
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.registry
                .admit(&peer)
                .map_err(|e| this.refuse(&peer, e))
        })
        .await
        .unwrap_or(Err(Rejection::Error))
    }

    /// `uid`'s gate to the admissions (idle gates are dropped as others are made).
    fn user_gate(&self, uid: u32) -> Arc<tokio::sync::Semaphore> {
        let mut gates = self.per_user.lock();
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        gates
            .entry(uid)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(ADMITTING_PER_USER)))
            .clone()
    }

    fn refuse(&self, peer: &Peer, e: AdmitError) -> Rejection {
        let why = e.to_string();
        peer.refuse(&self.refusals, e.into(), &why)
    }
}

/// What a launcher may send on its connection, at most (launchers send nothing).
const MAX_LAUNCHER_BYTES: usize = 4096;

/// How long an ended container's launcher may wait for the daemon to let go of its cgroup
/// before it is told `end` anyway (a pass that takes the final values, then `release`).
/// Long enough for a daemon starved of CPU (a debug build at 5% of a slow guest's CPU took
/// more than 5 s), so that a batch system's one rmdir after the launcher's exit still finds
/// the job's cgroups empty; apptheus-exec's `--end-wait` (40 s) is longer.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// Hold an accepted launcher's connection until it closes (true), its container ends, the
/// launcher sends more than `MAX_LAUNCHER_BYTES`, or the daemon stops. Closing it when the
/// container ends also closes any copy of it (passed on, or taken with pidfd_getfd): a
/// connection never outlives its container.
///
/// A launcher that reads (apptheus-exec) is told `ok <id>` once admitted and, once its
/// container ended and the daemon let go of its cgroup (bounded by `RELEASE_WAIT`),
/// `end <id>` just before the close: it exits only then, so that whatever removes the job's
/// cgroups after it (slurmstepd) finds them empty. One that never reads (Apptainer's starter)
/// is unaffected: the writes never block and their errors are ignored.
async fn hold(stream: UnixStream, admitted: &Admitted, shutdown: &CancellationToken) -> bool {
    let id = &admitted.identity.id;
    tell(&stream, "ok", id);
    let mut received = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = admitted.gone.cancelled() => break,
            ready = stream.readable() => {
                if ready.is_err() {
                    return true;
                }
                // The buffer lives only for the read, not in the task: at 10,000 held
                // connections a buffer kept across the await was 5 MB.
                match stream.try_read(&mut [0u8; 512]) {
                    // Whatever launchers send is ignored, up to a bound.
                    Ok(n) if n > 0 && received + n <= MAX_LAUNCHER_BYTES => received += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => return true,
                }
            }
        }
    }
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        _ = admitted.released.cancelled() => {}
        _ = tokio::time::sleep(RELEASE_WAIT) => {
            tracing::debug!(container = id.as_str(), "the container's cgroup was not let go of in time; its launcher is told it ended anyway");
        }
    }
    tell(&stream, "end", id);
    true
}

/// Write `<word> <id>\n` to a launcher without waiting: a few bytes into a socket buffer no
/// one else writes to; a launcher that never reads, or has gone, loses them.
fn tell(stream: &UnixStream, word: &str, id: &str) {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd as _;
    let line = format!("{word} {id}\n");
    let _ = send(
        stream.as_raw_fd(),
        line.as_bytes(),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_everyones_and_its_directory_roots_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/gateway.sock");
        let g = Gateway::bind(&path).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o777);
        assert_eq!(mode(path.parent().unwrap()), 0o755);
        drop(g);
        assert!(!path.exists());
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let err = Gateway::bind(&path).err().unwrap().to_string();
        assert!(err.contains("writable by a user other than root"), "{err}");
    }

    #[test]
    fn rejection_labels_are_distinct() {
        let mut labels: Vec<_> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Rejection::ALL.len());
    }
}
