//! Who is at the other end of a launcher's connection: the gateway's identification of a
//! [`Peer`] (the type is `crate::launcher`'s, shared with the registry that admits it).
//!
//! The peer is identified by SO_PEERCRED and held by a pidfd taken at once (SO_PEERPIDFD names
//! the very process that connected; older kernels fall back to pidfd_open on its pid). It is
//! trusted only when its executable is a trusted file now, and the pidfd still shows it alive
//! after that decision, so a pid reused in between is never trusted.
use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::UnixStream;

use super::{refusals::Refusals, trust::Trust};
use crate::{
    launcher::{Peer, Rejection},
    pidfd::Pidfd,
    testhook,
};

impl Peer {
    /// Identify the process at the other end of `stream` (blocking: reads /proc). A peer that
    /// cannot be identified is refused here, and logged.
    pub fn identify(stream: &UnixStream, log: &Refusals) -> Result<Peer, Rejection> {
        let Ok(cred) = getsockopt(stream, sockopt::PeerCredentials) else {
            return Err(log.refuse(Rejection::Error, 0, u32::MAX, "", "no peer credentials"));
        };
        let (pid, uid) = (cred.pid(), cred.uid());
        let pidfd = match peer_pidfd(stream, pid) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Err(log.refuse(Rejection::Vanished, pid, uid, "", "")),
            Err(e) => {
                return Err(log.refuse(Rejection::Error, pid, uid, "", &format!("pidfd: {e}")));
            }
        };
        let Ok(exe_path) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return Err(log.refuse(Rejection::Vanished, pid, uid, "", ""));
        };
        // Read by pid: `verify` checks afterwards, through the pidfd, that it was the peer's.
        let Some((uid, gid)) = real_ids(pid) else {
            return Err(log.refuse(Rejection::Vanished, pid, uid, "", ""));
        };
        Ok(Peer {
            pid,
            uid,
            gid,
            exe_path,
            pidfd,
        })
    }

    /// Decide whether the peer is trusted: its executable is trusted, and it is still the same
    /// live process after the decision.
    pub fn verify(&self, trust: &Trust, log: &Refusals) -> Result<(), Rejection> {
        trust
            .check(self.pid, &self.exe_path)
            .map_err(|r| self.refuse(log, r, ""))?;
        testhook::pause(testhook::Point::Decision, &[self.pid]);
        // The decision was about whatever process had that pid; confirm it is still the peer.
        match self.pidfd.has_exited() {
            Ok(false) => Ok(()),
            _ => Err(self.refuse(log, Rejection::Vanished, "")),
        }
    }

    /// Log the refusal of this peer (`why`, if more than the reason says); returns `reason`.
    pub fn refuse(&self, log: &Refusals, reason: Rejection, why: &str) -> Rejection {
        log.refuse(
            reason,
            self.pid,
            self.uid,
            &self.exe_path.to_string_lossy(),
            why,
        )
    }
}

/// The real uid and gid of `pid`, from the first fields of the `Uid:` and `Gid:` lines of its
/// status.
fn real_ids(pid: i32) -> Option<(u32, u32)> {
    let status = procfs::process::Process::new(pid).ok()?.status().ok()?;
    Some((status.ruid, status.rgid))
}

/// A pidfd of the peer: SO_PEERPIDFD (Linux 6.5+) names the very process that connected; older
/// kernels fall back to pidfd_open on the SO_PEERCRED pid.
fn peer_pidfd(stream: &UnixStream, pid: i32) -> std::io::Result<Option<Pidfd>> {
    match getsockopt(stream, sockopt::PeerPidfd) {
        Ok(fd) => Ok(Some(Pidfd::from(fd))),
        // The peer is already gone.
        Err(nix::errno::Errno::ESRCH) => Ok(None),
        Err(nix::errno::Errno::ENOPROTOOPT | nix::errno::Errno::EINVAL) => Pidfd::open(pid),
        Err(e) => Err(e.into()),
    }
}
