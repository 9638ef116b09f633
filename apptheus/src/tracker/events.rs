//! The programs' fork/exec/exit events of tracked processes, as an async stream.
use std::{io, time::Duration};

use apptheus_common::Event;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// How often the ring is read without a wakeup. The programs wake the reader at once only for
/// a container's last exit, or when a quarter of the ring is waiting (a wakeup costs them more
/// than all else they do), so this bounds how late the other events are seen (a child to move).
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Fork/exec/exit events of tracked processes.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    tick: tokio::time::Interval,
}

impl EventStream {
    pub(super) fn new(ring: RingBuf<MapData>) -> io::Result<EventStream> {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(EventStream {
            ring: watch(ring)?,
            tick,
        })
    }

    /// Wait for events and append every available one to `out` (at least one).
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        loop {
            tokio::select! {
                r = self.ring.readable_mut() => {
                    let mut guard = r?;
                    drain(guard.get_inner_mut(), out);
                    guard.clear_ready();
                }
                _ = self.tick.tick() => drain(self.ring.get_mut(), out),
            }
            if !out.is_empty() {
                return Ok(());
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>) {
    while let Some(item) = ring.next() {
        if let Some(ev) = decode(&item) {
            out.push(ev);
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
