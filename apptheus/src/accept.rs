//! Accepting connections with a bound on how many are handled at once.
//!
//! Both of the daemon's servers accept in a loop: the HTTP server (TCP) and the gateway (a unix
//! socket). [`Acceptor`] is that loop's common part: a fixed number of slots, each held by one
//! accepted connection while its handler needs bounding; a brief back-off when accepting fails
//! for lack of resources (EMFILE and the like), so a full file table does not spin a core; and
//! an end when the daemon's shutdown token is cancelled.
//!
//! Two ways to use it:
//! - [`Acceptor::next`]: wait for a free slot, then accept. While every slot is taken, new
//!   connections wait in the kernel's listen backlog, so a flood costs no memory here.
//! - [`Acceptor::accept`] then [`Acceptor::slot`]: accept first, look at the peer, then wait
//!   for a slot, asking a [`MakeRoom`] to close an idle connection when none is free. At most
//!   one accepted connection waits beyond the bound. The HTTP server does this: it caps each
//!   client and closes idle keep-alive connections for newcomers (see `http`).
//!
//! How long a [`Slot`] is held is the caller's choice. The HTTP server holds it for the
//! connection's life. The gateway holds it only while it identifies the peer: a trusted
//! launcher's connection then stays open for the container's life without a slot (the registry
//! bounds containers). The gateway's accept loop becomes:
//!
//! ```ignore
//! let acceptor = Acceptor::new(unix_listener, MAX_PENDING_CONNECTIONS, shutdown.clone(),
//!                              "a launcher connection");
//! while let Some(Accepted { stream, slot, .. }) = acceptor.next().await {
//!     tokio::spawn(async move {
//!         let admitted = admit(stream, ...).await; // SO_PEERCRED, trust decision
//!         drop(slot); // identified: the next peer may be
//!         if let Some((stream, key)) = admitted {
//!             hold(stream, key, ...).await;
//!         }
//!     });
//! }
//! Ok(()) // None: shutdown was cancelled
//! ```
//! (`Gateway` may keep its own type: implementing [`Listen`] for it is three lines.)
use std::{
    future::Future,
    io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    net::UnixListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::sync::CancellationToken;

use crate::fsperm::writable_by_others;

/// How long to pause after an accept error that a retry would meet again at once (out of file
/// descriptors or memory): long enough not to spin, short enough to go unnoticed.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket: what [`Acceptor`] accepts from.
pub trait Listen: Send + Sync + 'static {
    type Stream: Send + 'static;
    type Peer: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Listen for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send {
        tokio::net::TcpListener::accept(self)
    }
}

impl Listen for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send {
        tokio::net::UnixListener::accept(self)
    }
}

/// A listening unix socket of the daemon's (the gateway's, the query socket): bound safely,
/// its file removed when dropped (if it is still this socket's).
pub struct SocketFile {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

impl SocketFile {
    /// Listen on `path` (the value of `flag`, named in errors) with file mode `mode`: create
    /// its directory (0755) if missing (an existing one must be root's alone: whoever can
    /// write it could swap the socket), replace a stale socket there (never a regular file or
    /// a symlink). The mode is set at creation, through the umask (no chmod by path
    /// afterwards, which a link could redirect).
    pub fn bind(path: &Path, flag: &str, mode: u32) -> Result<SocketFile> {
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            if let Some(bad) = writable_by_others(dir) {
                bail!(
                    "{flag} {} is unsafe: {} is writable by a user other than root",
                    path.display(),
                    bad.display()
                );
            }
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
        // The daemon creates no other file while it starts: the umask is its own to set.
        let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777));
        let listener = UnixListener::bind(path);
        nix::sys::stat::umask(umask);
        let listener = listener.with_context(|| format!("listening on {}", path.display()))?;
        let ino = std::fs::symlink_metadata(path)?.ino();
        Ok(SocketFile {
            listener,
            path: path.to_path_buf(),
            ino,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Listen for SocketFile {
    type Stream = tokio::net::UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send {
        self.listener.accept()
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Remove the file only if it is still ours (another daemon may have replaced it).
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A server that can free a slot on demand by closing a connection it does not need (an idle
/// one); see [`Acceptor::slot`].
pub trait MakeRoom: Sync {
    /// Start freeing a slot; false when nothing can be closed now. True also when a slot is
    /// already on its way back (a connection told to close has not yet closed).
    fn make_room(&self) -> bool;
    /// Resolves when a connection may have become closable since `make_room` said false.
    fn became_idle(&self) -> impl Future<Output = ()> + Send;
}

/// One of the acceptor's slots; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// An accepted connection and its slot.
pub struct Accepted<L: Listen> {
    pub stream: L::Stream,
    pub slot: Slot,
}

/// Accepts from a listener, at most `limit` slots held at once, until `shutdown`.
pub struct Acceptor<L> {
    listener: L,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// For the log line of a failed accept: "accepting {what} failed".
    what: &'static str,
}

impl<L: Listen> Acceptor<L> {
    pub fn new(listener: L, limit: usize, shutdown: CancellationToken, what: &'static str) -> Self {
        Acceptor {
            listener,
            slots: Arc::new(Semaphore::new(limit)),
            shutdown,
            what,
        }
    }

    /// Slots free now.
    #[cfg(test)]
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Wait for a free slot, then for a connection; None once shutdown is cancelled.
    pub async fn next(&self) -> Option<Accepted<L>> {
        let permit = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            p = self.slots.clone().acquire_owned() => p.ok()?,
        };
        // The peer's address: the gateway identifies its peers by their credentials instead.
        let (stream, _) = self.accept().await?;
        Some(Accepted {
            stream,
            slot: Slot { _permit: permit },
        })
    }

    /// A free slot now, or none: for a server that refuses a connection at once when all its
    /// slots are taken (the query socket) rather than leaving it in the backlog.
    pub fn try_slot(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot { _permit: permit })
    }

    /// The next connection, without a slot; None once shutdown is cancelled. Errors that
    /// concern one connection are skipped; the others are logged and retried after
    /// [`ACCEPT_BACKOFF`].
    pub async fn accept(&self) -> Option<(L::Stream, L::Peer)> {
        loop {
            let res = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = self.listener.accept() => r,
            };
            match res {
                Ok(accepted) => return Some(accepted),
                Err(e) if is_peer_error(&e) => {
                    tracing::debug!(error = %e, "accepting {} failed", self.what);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting {} failed", self.what);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }

    /// A free slot; while there is none, `room` is asked to make one (again whenever one of
    /// its connections becomes idle). None once shutdown is cancelled.
    pub async fn slot(&self, room: &impl MakeRoom) -> Option<Slot> {
        loop {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                return Some(Slot { _permit: p });
            }
            let coming = room.make_room();
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                p = self.slots.clone().acquire_owned() => {
                    return p.ok().map(|p| Slot { _permit: p });
                }
                _ = room.became_idle(), if !coming => {}
            }
        }
    }
}

/// Errors of accept(2) that concern the one connection being accepted (Linux passes pending
/// network errors of the new socket this way; retrying at once is right) rather than the
/// listener or the process.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::EPERM
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt as _;

    /// The gateway's way, on a unix socket: a slot per connection being identified, given
    /// back after identification while the connection stays open; the next connection waits
    /// in the backlog while both slots are taken.
    #[tokio::test]
    async fn next_bounds_what_is_being_handled_on_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let shutdown = CancellationToken::new();
        let acceptor = Acceptor::new(listener, 2, shutdown.clone(), "a test connection");
        let clients: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        let a = acceptor.next().await.unwrap();
        let b = acceptor.next().await.unwrap();
        assert_eq!(acceptor.free_slots(), 0);
        // Both slots taken: the third waits (in the kernel's backlog, not accepted).
        let third = tokio::time::timeout(Duration::from_millis(100), acceptor.next()).await;
        assert!(third.is_err(), "accepted past the bound");
        // "Identified": the slot goes back, the connection stays open.
        let Accepted { stream, slot, .. } = a;
        drop(slot);
        let c = acceptor.next().await.unwrap();
        assert_eq!(acceptor.free_slots(), 0);
        drop((b, c));
        assert_eq!(acceptor.free_slots(), 2);
        // The first stream is still usable: the client's end sees no EOF.
        drop(clients);
        let mut stream = stream;
        let mut buf = [0u8; 1];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0, "client closed");
        shutdown.cancel();
        assert!(acceptor.next().await.is_none());
        assert!(acceptor.accept().await.is_none());
    }

    /// A server full of idle connections.
    struct Idle {
        closable: AtomicUsize,
        asked: AtomicUsize,
        idle: tokio::sync::Notify,
    }

    impl MakeRoom for Idle {
        fn make_room(&self) -> bool {
            self.asked.fetch_add(1, Ordering::SeqCst);
            self.closable
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
        fn became_idle(&self) -> impl Future<Output = ()> + Send {
            self.idle.notified()
        }
    }

    /// The HTTP server's way, over TCP: accept, then a slot; when none is free the server is
    /// asked to close an idle connection, and asked again when one becomes idle.
    #[tokio::test]
    async fn slot_asks_for_room_when_full() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let acceptor = Acceptor::new(listener, 1, shutdown.clone(), "a test connection");
        let room = Idle {
            closable: AtomicUsize::new(0),
            asked: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
        };
        let _c1 = std::net::TcpStream::connect(addr).unwrap();
        let _c2 = std::net::TcpStream::connect(addr).unwrap();
        let (_s1, peer) = acceptor.accept().await.unwrap();
        assert_eq!(peer.ip(), addr.ip());
        let held = acceptor.slot(&room).await.unwrap();
        assert_eq!(
            room.asked.load(Ordering::SeqCst),
            0,
            "a free slot needs no room"
        );
        let (_s2, _) = acceptor.accept().await.unwrap();
        // Full, nothing idle: asked once, then waits.
        let waiting = tokio::time::timeout(Duration::from_millis(100), acceptor.slot(&room)).await;
        assert!(waiting.is_err());
        assert_eq!(room.asked.load(Ordering::SeqCst), 1);
        // A connection becomes idle: asked again; it "closes" (its slot comes back).
        room.closable.store(1, Ordering::SeqCst);
        let slot = acceptor.slot(&room);
        let release = async {
            room.idle.notify_one();
            tokio::task::yield_now().await;
            drop(held);
        };
        let (slot, ()) = tokio::join!(slot, release);
        assert!(slot.is_some());
        assert!(room.asked.load(Ordering::SeqCst) >= 2);
        shutdown.cancel();
        assert!(
            acceptor.slot(&room).await.is_none(),
            "no slot after shutdown"
        );
    }

    #[test]
    fn peer_errors_are_told_apart_from_resource_errors() {
        assert!(is_peer_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(is_peer_error(&io::Error::from_raw_os_error(libc::EPROTO)));
        assert!(!is_peer_error(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!is_peer_error(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_peer_error(&io::Error::from_raw_os_error(libc::ENOBUFS)));
    }
}
