//! The wire types of apptheus, shared by the daemon and its clients: the containers as its
//! HTTP API and query socket give them, a container's summary record, and how numbers,
//! durations and times are written for people. No I/O, no runtime: a client links this and
//! nothing of the daemon.
pub mod containers;
pub mod duration;
pub mod format;
pub mod summary;
pub mod time;

pub use containers::{Container, Containers, One, State, Trend};
pub use summary::{CpusSource, PeakSource, Summary};
