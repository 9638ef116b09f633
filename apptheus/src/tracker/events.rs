//! The programs' fork/exec/exit events of tracked processes, as an async stream.
use std::io;

use apptheus_common::Event;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// Fork/exec/exit events of tracked processes.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub(super) fn new(ring: RingBuf<MapData>) -> io::Result<EventStream> {
        Ok(EventStream { ring: watch(ring)? })
    }

    /// Wait for events and append every available one to `out` (at least one).
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if let Some(ev) = decode(&item) {
                    out.push(ev);
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Register an fd-owning value with tokio's reactor for readability.
fn watch<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (aya's ring buffer keeps it open until dropped), and
    // the AsyncFd owns `inner`, so the fd stays open and the same for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

/// An event from ring-buffer bytes; None for a record of the wrong size.
fn decode(bytes: &[u8]) -> Option<Event> {
    (bytes.len() >= size_of::<Event>())
        // SAFETY: Event is plain old data and the length was checked; the read is unaligned-safe.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}
