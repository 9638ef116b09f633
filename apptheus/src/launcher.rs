//! A launcher at the gateway, as the modules that handle it share it: who it is (`Peer`, which
//! the gateway identifies and the registry admits) and why one is refused (`Rejection`, which
//! the gateway decides and the metrics count). A leaf: it imports no module that uses it.
use std::path::PathBuf;

use crate::pidfd::Pidfd;

/// A connected launcher, identified.
#[derive(Debug)]
pub struct Peer {
    pub pid: i32,
    /// Its real uid: the user who ran it. A set-uid launcher (Apptainer's `starter-suid`)
    /// runs with an effective uid of 0, which SO_PEERCRED reports.
    pub uid: u32,
    /// Its real gid (with `uid`, what a file its environment names is read as).
    pub gid: u32,
    /// What `/proc/<pid>/exe` resolved to (" (deleted)" included, if so).
    pub exe_path: PathBuf,
    /// Holds the peer process: valid as long as we keep it, whatever happens to the pid.
    pub pidfd: Pidfd,
}

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
    /// The containers' connections hold every descriptor the budget gives them.
    Descriptors,
    /// The daemon failed to set the container up (see its log).
    Error,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Rejection::Untrusted,
        Rejection::Replaced,
        Rejection::Vanished,
        Rejection::Nested,
        Rejection::Limit,
        Rejection::Descriptors,
        Rejection::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Untrusted => "untrusted",
            Rejection::Replaced => "replaced",
            Rejection::Vanished => "vanished",
            Rejection::Nested => "nested",
            Rejection::Limit => "limit",
            Rejection::Descriptors => "descriptors",
            Rejection::Error => "error",
        }
    }
}
