//! The tracker's errors: conditions a caller acts on are variants of their own.
use aya::maps::MapError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process belongs to a container already (a launcher started inside one).
    #[error("process {pid} is already tracked (container key {key})")]
    AlreadyTracked { pid: i32, key: u64 },
    /// The process was gone before it could be tracked.
    #[error("process {pid} exited before it could be tracked")]
    Exited { pid: i32 },
    /// A map of the eBPF programs could not be read or written.
    #[error("{what}: {err}")]
    Map { what: String, err: MapError },
    /// /proc could not be read, or a pidfd not opened or polled.
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    /// The programs could not be loaded or attached.
    #[error("{0}")]
    Load(String),
}

impl Error {
    pub(super) fn map(what: impl Into<String>, err: MapError) -> Error {
        Error::Map {
            what: what.into(),
            err,
        }
    }

    pub fn io(what: impl Into<String>, err: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            err,
        }
    }
}
