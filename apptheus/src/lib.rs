//! apptheus: per-container telemetry for HPC and batch hosts.
//!
//! A trusted launcher (Apptainer's starter, or `apptheus-exec`) connects to the `gateway`
//! socket; the `registry` makes it a container: a cgroup in every hierarchy (`cgroup`), and its
//! whole process tree followed by eBPF (`tracker`). The `sampler` reads the cgroups' counters
//! into `metrics`, which `http` serves to Prometheus, with TLS and basic auth from `webconfig`,
//! and the last minutes of each container into `history`, for `http`'s page and JSON.
//! `docs/architecture.md` draws the two data paths.
pub mod accept;
pub mod asuser;
pub mod cgroup;
pub mod cli;
pub mod collectors;
pub mod container;
pub mod daemon;
pub mod duration;
pub mod fsperm;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod history;
pub mod http;
pub mod job;
pub mod memory;
pub mod metrics;
pub mod pidfd;
pub mod privacy;
pub mod recovery;
pub mod registry;
pub mod sampler;
pub mod signals;
pub mod state;
pub mod summary;
pub mod telemetry;
#[doc(hidden)]
pub mod testhook;
pub mod tracker;
pub mod webconfig;
