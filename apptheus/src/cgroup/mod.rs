//! Container cgroups: one directory per container in every cgroup hierarchy the daemon uses, and
//! the counters read from them.
//!
//! Hosts come in three layouts, all found in /proc/self/mountinfo and never assumed:
//! - pure v1 (RHEL 7/8 era): one hierarchy per controller (or per group of co-mounted
//!   controllers such as `cpu,cpuacct`), usually under /sys/fs/cgroup/<name>;
//! - pure v2: one unified tree, usually at /sys/fs/cgroup;
//! - hybrid: v1 hierarchies for the controllers plus a unified tree (e.g. at
//!   /sys/fs/cgroup/unified) that may hold no controller at all.
//!
//! A container gets `<base>/<parent>/<id>` in each v1 hierarchy holding cpu, cpuacct, memory,
//! pids or blkio, and in the unified tree where one is mounted.
//!
//! - `layout`: the hierarchies, and cgroup paths to directories and back;
//! - `container`: a container's directories: made, reopened after a restart, removed;
//! - `stats`: the counters read from them (`Reader`, kept by the sampler);
//! - `probe`: each container's CPU probe file, kept open between passes;
//! - `files`, `parse`: the file I/O and the pure parsers of what the kernel writes.
mod container;
mod files;
mod layout;
mod parse;
mod probe;
mod stats;

// The fuzz targets' harnesses (re-exported as `crate::fuzzing`): for fuzz/ and the seeds' unit
// tests only.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzzing;

#[cfg(test)]
mod host_tests;

use std::{io, path::Path};

pub use container::{ContainerCgroup, Moved};
pub use layout::{Layout, MAX_CGROUP_PATH};
pub use stats::{Pressure, Reader, Stats};
// What the tests (here and in the modules that read `Stats`) build their fixtures from.
#[cfg(test)]
pub use layout::{Mode, Version};
#[cfg(test)]
pub use stats::{Cpu, Io, Memory, MemoryEvents, Pids, Pressures, Throttling};

/// Where a container's cgroup is made (`--cgroup.placement`: the variants' comments are its
/// help).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Inside the cgroup the launcher was in when it connected.
    Nested,
    /// Under each hierarchy's root, as the Go Apptheus did: outside the launcher's limits.
    Dedicated,
}

/// Where the numbers of one resource come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A controller's files in the container's cgroup.
    Cgroup,
    /// The container's processes, from /proc.
    Processes,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cgroup => "cgroup",
            Source::Processes => "processes",
        }
    }
}

/// What can go wrong with a container's cgroups.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed; `op` says what was being done.
    #[error("{op} {}: {err}", path.display())]
    Io {
        op: String,
        path: std::path::PathBuf,
        err: io::Error,
    },
    /// A name, a path or a kernel file the daemon cannot use.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The kernel refused because a cgroup still holds processes or child cgroups (EBUSY).
    pub fn is_busy(&self) -> bool {
        matches!(self, Error::Io { err, .. } if err.raw_os_error() == Some(libc::EBUSY))
    }

    fn io(op: &str, path: &Path, err: io::Error) -> Error {
        Error::Io {
            op: op.to_string(),
            path: path.to_path_buf(),
            err,
        }
    }
}

#[cfg(test)]
mod tests;
