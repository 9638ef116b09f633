//! The programs' fork/exec/exit events of tracked processes, as an async stream.
use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use apptheus_common::Event;
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::Notify};

/// How often the ring is read without a wakeup while events come, or a tree is being adopted.
/// The programs wake the reader at once only for a container's last exit, or when a quarter of
/// the ring is waiting (a wakeup costs them more than all else they do), so this bounds how
/// late the other events are seen (a child forked before its parent's move, to move).
const POLL_BUSY: Duration = Duration::from_millis(20);
/// How often otherwise: nothing waits on an event then (a container's last exit wakes the
/// reader), and at 20 ms the timer alone cost 0.4% of a core on an idle node.
const POLL_QUIET: Duration = Duration::from_millis(250);
/// How long the busy pace lasts after the last event or `Hurry::now`.
const BUSY_FOR: Duration = Duration::from_secs(2);

/// Fork/exec/exit events of tracked processes.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    hurry: Arc<Notify>,
    busy_until: Instant,
}

/// Tells the stream to read at the busy pace: a tree is being adopted, and its forks until
/// then may need moving.
#[derive(Clone)]
pub(super) struct Hurry(Arc<Notify>);

impl Hurry {
    pub(super) fn now(&self) {
        self.0.notify_one();
    }
}

impl EventStream {
    pub(super) fn new(ring: RingBuf<MapData>) -> io::Result<(EventStream, Hurry)> {
        let hurry = Arc::new(Notify::new());
        let stream = EventStream {
            ring: watch(ring)?,
            hurry: hurry.clone(),
            busy_until: Instant::now() + BUSY_FOR,
        };
        Ok((stream, Hurry(hurry)))
    }

    /// Wait for events and append every available one to `out` (at least one).
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        loop {
            let pace = if Instant::now() < self.busy_until {
                POLL_BUSY
            } else {
                POLL_QUIET
            };
            tokio::select! {
                r = self.ring.readable_mut() => {
                    let mut guard = r?;
                    drain(guard.get_inner_mut(), out);
                    guard.clear_ready();
                }
                () = self.hurry.notified() => {
                    self.busy_until = Instant::now() + BUSY_FOR;
                    drain(self.ring.get_mut(), out);
                }
                () = tokio::time::sleep(pace) => drain(self.ring.get_mut(), out),
            }
            if !out.is_empty() {
                self.busy_until = Instant::now() + BUSY_FOR;
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
