//! The query socket: read-only answers about the containers, each caller shown only its own.
//!
//! A second unix socket (`--query.socket-path`, mode 0666: anyone may connect). The kernel
//! names the caller (SO_PEERCRED; SO_PEERGROUPS for its groups): a user sees the containers
//! whose launcher's real uid is theirs (`Identity::owner`), live and retained; root and the
//! members of `--query.admin-group` see all. Someone else's container is answered exactly as
//! one that does not exist.
//!
//! One request line per connection (`request`), one answer, then the daemon closes. Bounded
//! like the gateway: 64 connections at once, 4 per uid (more are told `error: too many
//! connections` and closed at once), 1024 bytes and 2 s for the request, 5 s to take the
//! answer. Answers are built from the published snapshot on the blocking pool, two at a time:
//! nothing a client sends reaches the sampler or the admissions.
pub mod request;

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd as _},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Result;
use apptheus_api::One;
use nix::sys::socket::{getsockopt, sockopt};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
    sync::Semaphore,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use self::request::{BadRequest, MAX_REQUEST_BYTES, Request};
use crate::{
    accept::{Acceptor, Slot, SocketFile},
    container::unix_seconds,
    history::History,
    http::api,
    metrics::{ContainerSeries, Metrics, QueryOutcome},
};

/// Connections handled at once, in all.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Connections of one uid at once.
const MAX_CONNECTIONS_PER_USER: usize = 4;
/// Time a client has to send its request line, from the accept.
const REQUEST_TIME: Duration = Duration::from_secs(2);
/// Time a client has to take its answer (a client that does not read is cut off).
const ANSWER_TIME: Duration = Duration::from_secs(5);
/// Answers built at once (each a pass over the snapshot; milliseconds at 1,000 containers).
const MAX_BUILDS: usize = 2;

/// The answer to a container the caller may not see, or that does not exist.
const NO_SUCH_CONTAINER: &[u8] = b"error: no such container\n";

/// The listening query socket; its file is removed when dropped.
pub struct Query {
    socket: SocketFile,
}

impl Query {
    /// Listen on `path` (as the gateway does: see `SocketFile::bind`), open to everyone.
    pub fn bind(path: &Path) -> Result<Query> {
        Ok(Query {
            socket: SocketFile::bind(path, "--query.socket-path", 0o666)?,
        })
    }

    /// Answer queries until `shutdown`; `admin_gid` is `--query.admin-group`'s gid.
    pub async fn serve(
        self,
        admin_gid: Option<u32>,
        metrics: Arc<Metrics>,
        history: Arc<History>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let server = Arc::new(Server {
            metrics,
            history,
            builds: Arc::new(Semaphore::new(MAX_BUILDS)),
            per_user: Default::default(),
        });
        let acceptor = Acceptor::new(
            self.socket,
            MAX_CONNECTIONS,
            shutdown.clone(),
            "a query connection",
        );
        while let Some((stream, _)) = acceptor.accept().await {
            // Decided here, without a task or a wait: a flood costs one accept each.
            let Some(slot) = acceptor.try_slot() else {
                server.refuse(&stream);
                continue;
            };
            let viewer = match Viewer::of(&stream, admin_gid) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "query connection without credentials");
                    server.metrics.query(QueryOutcome::Refused);
                    continue;
                }
            };
            let Some(turn) = UserTurn::take(&server.per_user, viewer.uid) else {
                server.refuse(&stream);
                continue;
            };
            tokio::spawn(
                server
                    .clone()
                    .connection(stream, viewer, (slot, turn), shutdown.clone()),
            );
        }
        Ok(())
    }
}

/// Who is asking, as the kernel names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Viewer {
    uid: u32,
    /// Root, or a member of `--query.admin-group`: sees every container.
    all: bool,
}

impl Viewer {
    /// The peer of `stream`: SO_PEERCRED (uid, primary gid), and when an admin group is set
    /// and the peer is not root, SO_PEERGROUPS (its supplementary groups when it connected).
    fn of(stream: &UnixStream, admin_gid: Option<u32>) -> io::Result<Viewer> {
        let cred = getsockopt(stream, sockopt::PeerCredentials)?;
        let uid = cred.uid();
        let all = uid == 0
            || match admin_gid {
                None => false,
                Some(admin) => cred.gid() == admin || peer_groups(stream)?.contains(&admin),
            };
        Ok(Viewer { uid, all })
    }

    /// Whether this caller may see the container of `series`. A container whose owner is
    /// unknown (recovered from an older state file) is shown to those who see all only.
    fn sees(self, series: &ContainerSeries) -> bool {
        self.all || series.identity.owner == Some(self.uid)
    }
}

/// The supplementary groups of the peer of `socket` when it connected (SO_PEERGROUPS, Linux
/// 4.13+; nix has no wrapper for it).
fn peer_groups(socket: &impl AsFd) -> io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    // NGROUPS_MAX on Linux: the kernel never answers more.
    const MAX_GROUPS: usize = 65_536;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * GID)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the buffer is `len` bytes of gid_t, owned and alive for the call; the kernel
        // writes at most `len` bytes and sets `len` to what it wrote (or needs, on ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / GID;
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= MAX_GROUPS {
            groups.resize(needed, 0);
            continue;
        }
        return Err(e);
    }
}

/// One of a uid's connections at once; dropping it gives the turn back.
struct UserTurn {
    per_user: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl UserTurn {
    /// A turn of `uid`, unless it has `MAX_CONNECTIONS_PER_USER` already.
    fn take(per_user: &Arc<Mutex<HashMap<u32, usize>>>, uid: u32) -> Option<UserTurn> {
        let mut counts = per_user.lock();
        let n = counts.entry(uid).or_default();
        if *n >= MAX_CONNECTIONS_PER_USER {
            return None;
        }
        *n += 1;
        Some(UserTurn {
            per_user: per_user.clone(),
            uid,
        })
    }
}

impl Drop for UserTurn {
    fn drop(&mut self) {
        let mut counts = self.per_user.lock();
        if let Some(n) = counts.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

struct Server {
    metrics: Arc<Metrics>,
    history: Arc<History>,
    builds: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Server {
    /// Tell a connection over the bounds so, if its buffer takes it now, and close it.
    fn refuse(&self, stream: &UnixStream) {
        let _ = stream.try_write(b"error: too many connections\n");
        self.metrics.query(QueryOutcome::Refused);
    }

    /// One connection: its request line within `REQUEST_TIME`, its answer within
    /// `ANSWER_TIME`, then closed. `_held` (its slot and its user's turn) goes with it.
    async fn connection(
        self: Arc<Self>,
        mut stream: UnixStream,
        viewer: Viewer,
        _held: (Slot, UserTurn),
        shutdown: CancellationToken,
    ) {
        let line = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(REQUEST_TIME, read_request(&mut stream)) => {
                r.unwrap_or(Err(BadRequest::NoNewline))
            }
        };
        let deadline = Instant::now() + ANSWER_TIME;
        let answer = match line.and_then(|l| request::parse(&l)) {
            Ok(request) => match self.answer(request, viewer, deadline).await {
                Some(answer) => {
                    self.metrics.query(QueryOutcome::Answered);
                    answer
                }
                None => {
                    self.metrics.query(QueryOutcome::Refused);
                    b"error: busy, ask again\n".to_vec()
                }
            },
            Err(e) => {
                self.metrics.query(QueryOutcome::BadRequest);
                tracing::debug!(uid = viewer.uid, error = %e, "bad query request");
                format!("error: {e}\n").into_bytes()
            }
        };
        let write = async {
            stream.write_all(&answer).await?;
            stream.shutdown().await
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::timeout_at(deadline, write) => {}
        }
    }

    /// The answer to `request`, built on the blocking pool once one of `MAX_BUILDS` turns is
    /// free before `deadline` (else none: the daemon is busy).
    async fn answer(&self, request: Request, viewer: Viewer, deadline: Instant) -> Option<Vec<u8>> {
        let turn = tokio::time::timeout_at(deadline, self.builds.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let snapshot = self.metrics.snapshot();
        let history = self.history.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let now = unix_seconds(std::time::SystemTime::now());
            answer(&request, viewer, snapshot.series(), &history, now)
        })
        .await
        .ok()
    }
}

/// The answer to `request` from `viewer`, of the containers in `series`: JSON and a newline,
/// or the not-found line.
fn answer(
    request: &Request,
    viewer: Viewer,
    series: &[ContainerSeries],
    history: &History,
    now: f64,
) -> Vec<u8> {
    match request {
        Request::Containers { history: points } => {
            let view = api::build_for(series, history, *points, now, |s| viewer.sees(s), true);
            json_line(&view)
        }
        Request::Container(id) => {
            let shown = |s: &ContainerSeries| viewer.sees(s) && s.identity.id == *id;
            let mut view = api::build_for(series, history, true, now, shown, true);
            match view.containers.pop() {
                Some(container) => json_line(&One { container }),
                None => NO_SUCH_CONTAINER.to_vec(),
            }
        }
    }
}

/// `value` as JSON (serde_json, as `/api/containers`) and a newline.
fn json_line(value: &impl Serialize) -> Vec<u8> {
    // Plain data: serializing it cannot fail.
    let mut out = serde_json::to_vec(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Read one request line: up to and with its `\n`, at most `MAX_REQUEST_BYTES` (bytes after
/// the newline are ignored).
async fn read_request(stream: &mut UnixStream) -> Result<Vec<u8>, BadRequest> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut n = 0;
    loop {
        let got = match stream.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return Err(BadRequest::NoNewline),
            Ok(got) => got,
        };
        if let Some(i) = buf[n..n + got].iter().position(|&b| b == b'\n') {
            buf.truncate(n + i + 1);
            return Ok(buf);
        }
        n += got;
        if n == MAX_REQUEST_BYTES {
            return Err(BadRequest::TooLong);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use apptheus_api::State;

    #[test]
    fn each_caller_sees_its_own_and_others_are_not_found() {
        let history = History::new(Duration::from_millis(500));
        let series = [
            api::tests::series("a_1", "", None),
            api::tests::series("b_2", "", Some(200.0)),
        ];
        let mut series = series;
        let own = |s: &mut ContainerSeries, uid| {
            let mut identity = (*s.identity).clone();
            identity.owner = uid;
            s.identity = Arc::new(identity);
        };
        own(&mut series[0], Some(1000));
        own(&mut series[1], Some(1001));
        let ids = |viewer: Viewer| {
            let out = answer(
                &Request::Containers { history: false },
                viewer,
                &series,
                &history,
                300.0,
            );
            let view: apptheus_api::Containers = serde_json::from_slice(&out).unwrap();
            assert_eq!(out.last(), Some(&b'\n'));
            view.containers
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        };
        let user = |uid| Viewer { uid, all: false };
        assert_eq!(ids(user(1000)), ["a_1"]);
        assert_eq!(ids(user(1001)), ["b_2"]);
        assert!(ids(user(1002)).is_empty());
        assert_eq!(ids(Viewer { uid: 0, all: true }).len(), 2);
        // Another's container: the very answer of one that does not exist.
        let one = |viewer, id: &str| {
            answer(
                &Request::Container(id.into()),
                viewer,
                &series,
                &history,
                300.0,
            )
        };
        assert_eq!(one(user(1000), "b_2"), one(user(1000), "nosuch_1"));
        assert_eq!(one(user(1000), "b_2"), NO_SUCH_CONTAINER);
        let mine: One = serde_json::from_slice(&one(user(1001), "b_2")).unwrap();
        assert_eq!(mine.container.state, State::Ended);
        // No summary in the snapshot: none in the answer.
        assert_eq!(mine.container.summary, None);
    }

    #[test]
    fn a_container_of_unknown_owner_is_shown_to_those_who_see_all() {
        let history = History::new(Duration::from_millis(500));
        let s = api::tests::series("a_1", "", None);
        assert_eq!(s.identity.owner, None);
        assert!(
            !Viewer {
                uid: 1000,
                all: false
            }
            .sees(&s)
        );
        assert!(
            Viewer {
                uid: 1000,
                all: true
            }
            .sees(&s)
        );
        let out = answer(
            &Request::Container("a_1".into()),
            Viewer { uid: 0, all: true },
            &[s],
            &history,
            300.0,
        );
        assert!(out.starts_with(b"{\"container\":{\"id\":\"a_1\""));
    }

    #[test]
    fn per_user_turns_are_bounded_and_given_back() {
        let per_user = Arc::new(Mutex::new(HashMap::new()));
        let turns: Vec<_> = (0..MAX_CONNECTIONS_PER_USER)
            .map(|_| UserTurn::take(&per_user, 7).unwrap())
            .collect();
        assert!(UserTurn::take(&per_user, 7).is_none());
        assert!(UserTurn::take(&per_user, 8).is_some(), "another user");
        drop(turns);
        assert!(per_user.lock().is_empty());
        assert!(UserTurn::take(&per_user, 7).is_some());
    }

    #[test]
    fn the_peers_groups_are_the_kernels() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut theirs = peer_groups(&a).unwrap();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }
}
