//! apptheus: per-container telemetry for HPC and batch hosts.
//!
//! A trusted launcher (Apptainer's starter, or `apptheus-exec`) connects to the `gateway`
//! socket; the `registry` makes it a container: a cgroup in every hierarchy (`cgroup`), and its
//! whole process tree followed by eBPF (`tracker`). The `sampler` reads the cgroups' counters
//! into `metrics`, which `http` serves to Prometheus, with TLS and basic auth from `webconfig`,
//! and the last minutes of each container into `history`, for `http`'s page and JSON.
//! `docs/architecture.md` draws the two data paths.
// `pub`: what the binaries (src/main.rs, src/bin/), the integration tests (tests/) and the fuzz
// targets (fuzz/) use; the rest is the crate's own, so the compiler finds what is unused.
pub(crate) mod accept;
pub(crate) mod asuser;
pub(crate) mod cgroup;
pub mod cli;
pub(crate) mod collectors;
pub mod container;
pub mod daemon;
pub(crate) mod descriptors;
pub(crate) mod fsperm;
// The fuzz targets' harnesses: not an API, and not in the daemon (feature `fuzzing`, which
// fuzz/Cargo.toml turns on; always in this crate's unit tests, which replay the seeds).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod history;
pub mod http;
pub(crate) mod job;
pub(crate) mod launcher;
pub(crate) mod memory;
pub(crate) mod metrics;
pub mod pidfd;
pub mod privacy;
pub(crate) mod query;
pub(crate) mod ratelimit;
pub(crate) mod recovery;
pub(crate) mod registry;
pub(crate) mod safefile;
pub(crate) mod sampler;
pub mod signals;
pub(crate) mod state;
pub(crate) mod summary;
pub mod telemetry;
pub(crate) mod testhook;
pub mod tracker;
pub mod webconfig;
