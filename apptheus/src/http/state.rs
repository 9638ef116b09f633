//! What every route shares: the state the router hands each handler, and the limits of the
//! work it queues. A leaf of `http`: the handlers and views import it, never the reverse.
use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use tokio::sync::Semaphore;

use crate::{history::History, metrics::Metrics};

/// Metrics responses being built at once: each takes a blocking thread (the pool is shared with
/// the sampler and the gateway), so a scrape storm must not occupy them all.
pub const MAX_CONCURRENT_SCRAPES: usize = 4;
/// How long a scrape waits for its turn before a 503 with Retry-After.
pub const SCRAPE_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// Views built at once (each takes a blocking thread, shared with scrapes and the sampler).
pub const MAX_CONCURRENT_VIEWS: usize = 2;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    /// Set once the socket listens and the eBPF programs are attached.
    pub ready: Arc<AtomicBool>,
    /// Bounds concurrent metrics encodes (MAX_CONCURRENT_SCRAPES).
    pub scrapes: Arc<Semaphore>,
    /// The containers' last minutes, which the sampler keeps (empty until `with_history`).
    pub history: Arc<History>,
    /// Bounds concurrent page and JSON builds (MAX_CONCURRENT_VIEWS).
    pub views: Arc<Semaphore>,
}

impl AppState {
    pub fn new(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> AppState {
        AppState {
            metrics,
            ready,
            scrapes: Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES)),
            history: Arc::new(History::new(Duration::from_millis(500))),
            views: Arc::new(Semaphore::new(MAX_CONCURRENT_VIEWS)),
        }
    }

    /// Show `history`, the one the sampler keeps.
    pub fn with_history(mut self, history: Arc<History>) -> AppState {
        self.history = history;
        self
    }
}
