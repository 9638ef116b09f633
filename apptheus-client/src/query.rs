//! The daemon's query socket (`--query.socket-path`): one request line, one JSON answer. The
//! kernel tells the daemon who is asking, so a user gets their own containers, root and
//! `--query.admin-group` every one; no password, nothing to configure.
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use apptheus_api::{Container, Containers, One};

/// Where the packaged daemon listens.
pub const DEFAULT_SOCKET: &str = "/run/apptheus/query.sock";

/// The daemon answers from memory in milliseconds; a stalled one is an error, not a hang.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A node's whole answer, at most (about 20,000 containers without their points).
const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach apptheus's query socket {path}: {reason} (is the daemon running here? --socket names another socket, --url asks over HTTP)"
    )]
    Unreachable { path: String, reason: String },
    #[error("apptheus's query socket {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("apptheus answered: {0}")]
    Refused(String),
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error(
        "the answer of {path} is not what this client reads ({reason}): is the daemon another version?"
    )]
    Format { path: String, reason: String },
}

pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: &Path) -> Client {
        Client {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The caller's containers (every container for root and the admin group), live and
    /// retained, each ended one with its summary.
    pub fn containers(&self, history: bool) -> Result<Containers, Error> {
        let request = if history {
            "containers history"
        } else {
            "containers"
        };
        let answer = self.ask(request)?;
        self.parse(&answer)
    }

    /// One container by id; another user's is answered as one that does not exist.
    pub fn container(&self, id: &str) -> Result<Container, Error> {
        if id.is_empty() || id.len() > 255 || id.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Error::NoSuchContainer(crate::terminal::safe(id)));
        }
        match self.ask(&format!("container {id}")) {
            Ok(answer) => self.parse::<One>(&answer).map(|one| one.container),
            Err(Error::Refused(reason)) if reason == "no such container" => {
                Err(Error::NoSuchContainer(crate::terminal::safe(id)))
            }
            Err(e) => Err(e),
        }
    }

    fn ask(&self, request: &str) -> Result<Vec<u8>, Error> {
        let path = self.path.display().to_string();
        let io = |e: std::io::Error| Error::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut stream = UnixStream::connect(&self.path).map_err(|e| Error::Unreachable {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        stream
            .write_all(format!("{request}\n").as_bytes())
            .map_err(io)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .map_err(io)?;
        if let Some(reason) = answer.strip_prefix(b"error: ") {
            let reason = String::from_utf8_lossy(reason);
            return Err(Error::Refused(crate::terminal::safe(reason.trim_end())));
        }
        Ok(answer)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, answer: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(answer).map_err(|e| Error::Format {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })
    }
}
