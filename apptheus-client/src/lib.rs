//! The clients of the apptheus daemon, linked into `apptheus-top` and `apptheus-report` and
//! never into the daemon: how to ask it (`query`: its local socket, private by the kernel's
//! identity of the caller; `http`: its HTTP API, for remote use), what a report says
//! (`report`), a job's containers on every node from the fleet's central store (`fleet`), a
//! job's record in jobstats' format (`jobstats`), and what may reach a terminal
//! (`terminal`).
pub mod fleet;
pub mod http;
pub mod jobstats;
pub mod query;
pub mod report;
pub mod terminal;
