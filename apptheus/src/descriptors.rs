//! The daemon's file descriptors as a budget, so that no number of containers can take the
//! ones its own work needs.
//!
//! The limit is the process's `RLIMIT_NOFILE` (its soft limit, raised to the hard one at
//! start). A reserve is kept for what is bounded elsewhere and must never fail for want of a
//! descriptor: the daemon's own (maps, programs, listeners, measured at `init`), the HTTP and
//! query connections (each server caps its own), the gateway's connections being identified,
//! the state and summary files, a pass's files. The rest is shared by two kinds of holders:
//! - **firm**: a container's launcher connection, held for the container's life (settled),
//!   and, until it is admitted, its peer's pidfd; the pidfds an admission's walk holds while it
//!   moves a tree. The gateway accepts a connection only when it has room for it and its
//!   pidfd, so launchers wait in the listen backlog (costing no descriptor) while admissions
//!   under way hold the room, and are refused (and counted) only once settled connections
//!   hold it all. A walk that finds no room is cut short and goes on at the next pass.
//! - **probes**: the kept-open CPU probe files, in whatever the firm holders leave; a probe
//!   past that is read by opening and closing it. A firm holder that finds the room taken by
//!   probes closes one at once (`Evict`), so the two never hold more than their part.
//!
//! So N containers hold N connections and min(N, room left) probes: at the packaged unit's
//! 65,536 every probe of 30,000 containers stays open.
use std::{
    collections::BTreeMap,
    sync::{
        OnceLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
};

use parking_lot::Mutex;

/// Descriptors for what the daemon opens beyond its own at start and the holders here: a
/// pass's files, the state and summary files, log output, blocking threads' reads.
const SLACK: usize = 128;

/// The descriptors the holders share, and what they hold.
struct Pool {
    /// The limit, and the shared part: the limit less the reserve (fixed at first use).
    budget: OnceLock<(usize, usize)>,
    /// Held by firm holders (connections, pidfds).
    firm: AtomicUsize,
    /// Of those, admitted containers' connections.
    settled: AtomicUsize,
    /// Kept-open probe files.
    probes: AtomicUsize,
    /// Woken when firm holders give room back.
    room: tokio::sync::Notify,
    /// Who keeps each of them open, to close one for a firm holder.
    kept: Mutex<Kept>,
}

struct Kept {
    next: u64,
    holders: BTreeMap<u64, Weak<dyn Evict>>,
}

/// The keeper of an open probe file, which closes it when asked (its `ProbeSlot` with it).
pub trait Evict: Send + Sync {
    fn evict(&self);
}

static POOL: Pool = Pool {
    budget: OnceLock::new(),
    firm: AtomicUsize::new(0),
    settled: AtomicUsize::new(0),
    probes: AtomicUsize::new(0),
    room: tokio::sync::Notify::const_new(),
    kept: Mutex::new(Kept {
        next: 0,
        holders: BTreeMap::new(),
    }),
};

/// Fix the budget: the limit now, less a reserve of `connections` (the servers' caps on their
/// connections, the gateway's on those being identified), the descriptors open now and a
/// slack. Call once, after the limit was raised and the programs loaded; without it the first
/// use fixes the budget with no connections reserved (unit tests). Returns the limit and the
/// shared part.
pub fn init(connections: usize) -> (usize, usize) {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        });
    let own = std::fs::read_dir("/proc/self/fd").map_or(64, Iterator::count);
    // At most half: a small limit still leaves room for containers.
    let reserve = (own + connections + SLACK).min(limit / 2);
    *POOL.budget.get_or_init(|| (limit, limit - reserve))
}

impl Pool {
    fn shared(&self) -> usize {
        self.budget().1
    }

    fn budget(&self) -> (usize, usize) {
        match self.budget.get() {
            Some(b) => *b,
            None => init(0),
        }
    }

    /// Take one unit of `counter` if it and `others` stay within the shared part.
    fn take(&self, counter: &AtomicUsize, others: usize) -> bool {
        let shared = self.shared();
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n + others < shared).then_some(n + 1)
            })
            .is_ok()
    }

    fn take_firm(&'static self) -> bool {
        loop {
            if self.take(&self.firm, self.probes.load(Ordering::Relaxed)) {
                return true;
            }
            // Probes hold the room: one gives it up, unless firm holders hold it all.
            if self.firm.load(Ordering::Relaxed) >= self.shared() || !self.evict_one() {
                return false;
            }
        }
    }

    /// Close one kept-open probe; false when none is kept.
    fn evict_one(&self) -> bool {
        // Taken out under the lock, closed after it: the keeper's own lock is taken before
        // this one when it keeps a file.
        let Some((_, holder)) = self.kept.lock().holders.pop_first() else {
            return false;
        };
        if let Some(holder) = holder.upgrade() {
            holder.evict();
        }
        true
    }

    fn take_probe(&'static self, holder: Weak<dyn Evict>) -> Option<ProbeSlot> {
        if !self.take(&self.probes, self.firm.load(Ordering::Relaxed)) {
            return None;
        }
        let mut kept = self.kept.lock();
        let id = kept.next;
        kept.next += 1;
        kept.holders.insert(id, holder);
        Some(ProbeSlot { pool: self, id })
    }
}

/// Firm descriptors held now (connections and walks' pidfds).
pub fn firm() -> usize {
    POOL.firm.load(Ordering::Relaxed)
}

/// Probe files kept open now.
pub fn probes() -> usize {
    POOL.probes.load(Ordering::Relaxed)
}

/// What the holders may hold together.
pub fn shared() -> usize {
    POOL.shared()
}

/// The descriptor limit the budget was made for.
pub fn limit() -> usize {
    POOL.budget().0
}

/// What a new launcher connection may do.
#[derive(Debug)]
pub enum Room {
    /// Be accepted: its connection and its pidfd hold this lease.
    Accept(Lease),
    /// Be accepted and refused: admitted containers' connections hold the whole budget.
    Spent,
}

/// Wait until a new launcher connection and its pidfd fit in the budget, or none ever will
/// while the containers now admitted live.
pub async fn room_for_connection() -> Room {
    POOL.room_for_connection().await
}

impl Pool {
    async fn room_for_connection(&'static self) -> Room {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check: a room given back in between still wakes it.
            notified.as_mut().enable();
            if self.settled.load(Ordering::Relaxed) + 2 > self.shared() {
                return Room::Spent;
            }
            let mut lease = Lease {
                pool: self,
                held: 0,
                settled: false,
            };
            if lease.take() && lease.take() {
                return Room::Accept(lease);
            }
            // Given back quietly: a wakeup here would wake this very wait.
            self.firm.fetch_sub(lease.held, Ordering::Relaxed);
            lease.held = 0;
            drop(lease);
            notified.await;
        }
    }
}

/// Firm descriptors taken by one holder; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    pool: &'static Pool,
    held: usize,
    /// One of them is an admitted container's connection.
    settled: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Default for Lease {
    fn default() -> Lease {
        Lease {
            pool: &POOL,
            held: 0,
            settled: false,
        }
    }
}

impl Lease {
    /// Room for one more firm descriptor (probes give theirs up), taken for this lease.
    pub fn take(&mut self) -> bool {
        let ok = self.pool.take_firm();
        self.held += usize::from(ok);
        ok
    }

    /// Hold exactly `n` (taking more may exceed the budget: for descriptors already open).
    pub fn keep(&mut self, n: usize) {
        if n < self.held {
            self.pool.firm.fetch_sub(self.held - n, Ordering::Relaxed);
            self.pool.room.notify_waiters();
        } else {
            self.pool.firm.fetch_add(n - self.held, Ordering::Relaxed);
        }
        self.held = n;
    }

    /// The connection's container was admitted: its pidfd is closed, its connection held
    /// for the container's life.
    pub fn settle(&mut self) {
        if self.held == 2 && !self.settled {
            self.pool.firm.fetch_sub(1, Ordering::Relaxed);
            self.held = 1;
            self.settled = true;
            self.pool.settled.fetch_add(1, Ordering::Relaxed);
            self.pool.room.notify_waiters();
        }
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled {
            self.pool.settled.fetch_sub(1, Ordering::Relaxed);
        }
        self.pool.firm.fetch_sub(self.held, Ordering::Relaxed);
        if self.held > 0 {
            self.pool.room.notify_waiters();
        }
    }
}

/// One kept-open probe file's place in the budget; given back when dropped.
#[derive(Debug)]
pub struct ProbeSlot {
    pool: &'static Pool,
    id: u64,
}

impl ProbeSlot {
    /// A place for one more probe kept open by `holder`, if the firm holders and the other
    /// probes leave one. The holder may be asked to close it (`Evict`).
    pub fn take(holder: Weak<dyn Evict>) -> Option<ProbeSlot> {
        POOL.take_probe(holder)
    }
}

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        self.pool.kept.lock().holders.remove(&self.id);
        self.pool.probes.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A keeper of one slot, as a probe file keeps its place.
    struct Keeper(Mutex<Option<ProbeSlot>>);

    impl Evict for Keeper {
        fn evict(&self) {
            self.0.lock().take();
        }
    }

    #[test]
    fn firm_holders_take_the_probes_room_and_no_more() {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            budget: OnceLock::from((20, 10)),
            firm: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            room: tokio::sync::Notify::const_new(),
            kept: Mutex::new(Kept {
                next: 0,
                holders: BTreeMap::new(),
            }),
        }));
        let keepers: Vec<Arc<Keeper>> = (0..12)
            .map(|_| Arc::new(Keeper(Mutex::new(None))))
            .collect();
        let kept = keepers
            .iter()
            .filter(|k| {
                let weak: Weak<dyn Evict> = Arc::downgrade(k) as Weak<dyn Evict>;
                let slot = pool.take_probe(weak);
                let some = slot.is_some();
                *k.0.lock() = slot;
                some
            })
            .count();
        assert_eq!(kept, 10, "probes fill the shared part");
        let mut lease = Lease {
            pool,
            held: 0,
            settled: false,
        };
        assert!(lease.take(), "a connection takes a probe's room");
        let open = keepers.iter().filter(|k| k.0.lock().is_some()).count();
        assert_eq!(open, 9, "by closing one probe at once");
        assert_eq!(pool.probes.load(Ordering::Relaxed), 9);
        while lease.take() {}
        assert_eq!(lease.held(), 10, "firm holders stop at the shared part");
        assert_eq!(
            pool.probes.load(Ordering::Relaxed),
            0,
            "every probe gave way"
        );
        assert!(pool.kept.lock().holders.is_empty());
        let weak: Weak<dyn Evict> = Arc::downgrade(&keepers[0]) as Weak<dyn Evict>;
        assert!(pool.take_probe(weak.clone()).is_none());
        drop(lease);
        assert_eq!(pool.firm.load(Ordering::Relaxed), 0);
        assert!(pool.take_probe(weak).is_some());
    }

    #[tokio::test]
    async fn a_connection_waits_while_admissions_hold_the_room_and_is_refused_once_settled_ones_do()
    {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            budget: OnceLock::from((10, 5)),
            firm: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            room: tokio::sync::Notify::const_new(),
            kept: Mutex::new(Kept {
                next: 0,
                holders: BTreeMap::new(),
            }),
        }));
        let accept = |room| match room {
            Room::Accept(lease) => lease,
            Room::Spent => panic!("refused with room to come"),
        };
        let mut first = accept(pool.room_for_connection().await);
        let mut second = accept(pool.room_for_connection().await);
        // Four of five held by two admissions under way: the third waits.
        let third = tokio::spawn(pool.room_for_connection());
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        first.settle();
        let mut third = accept(third.await.unwrap());
        second.settle();
        third.settle();
        // Three settled: a fourth and its pidfd would need five.
        let mut fourth = accept(pool.room_for_connection().await);
        fourth.settle();
        assert!(matches!(pool.room_for_connection().await, Room::Spent));
        drop(first);
        assert!(matches!(pool.room_for_connection().await, Room::Accept(_)));
    }
}
