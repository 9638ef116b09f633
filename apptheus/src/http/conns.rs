//! The open HTTP connections: whose each is, whether it is serving a request or idle (waiting
//! for a request head), and which to close when room is needed.
//!
//! Two rules keep one client from holding the server: a client has at most
//! [`MAX_CONNECTIONS_PER_CLIENT`] connections (at its cap, a new one replaces the client's own
//! connection idle longest, or is closed when none can go); and when the whole server is full,
//! the connection idle longest, whoever's, is closed for the newcomer ([`MakeRoom`]).
//!
//! What can go: a keep-alive connection between two requests (its client opens another when it
//! needs one), and a new connection that has sent no request for [`NEW_CONNECTION_GRACE`] (a
//! slow or silent client). Never a connection serving a request, and never a younger new one:
//! its request may be on its way, or waiting in the socket for the server to read it.
use std::{
    collections::HashMap,
    fmt,
    future::Future,
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use parking_lot::{Mutex, MutexGuard};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::accept::MakeRoom;

/// Open connections of one client at most. Prometheus uses one per target, a browser six; 64
/// leaves room for several scrapers behind one address while 8 clients cannot fill the server.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// How long a new connection may go without a request before it can be closed for room: many
/// round trips (TCP, TLS, the request) on a slow link, while a silent client is cut at once.
pub const NEW_CONNECTION_GRACE: Duration = Duration::from_secs(2);

/// A client, as far as limits go: its IP address, an IPv6 one by its /64 network (one host
/// usually has a whole /64, so single addresses would make the limits per-address, not
/// per-host). IPv4-mapped IPv6 addresses (a dual-stack listener) count as their IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client(IpAddr);

impl Client {
    /// For requests that came without one (unit tests driving the router directly).
    pub const UNKNOWN: Client = Client(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));

    pub fn of(ip: IpAddr) -> Client {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !(u128::from(u64::MAX));
                Client(IpAddr::V6(Ipv6Addr::from(network)))
            }
            v4 => Client(v4),
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// The table of open connections.
pub struct Connections {
    per_client: usize,
    new_grace: Duration,
    table: Mutex<Table>,
    idle: Notify,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Ticks, not Instants: the order in which connections became idle is all that counts,
    /// and a counter has no ties.
    clock: u64,
    entries: HashMap<u64, Entry>,
}

struct Entry {
    client: Client,
    /// Requests being served (hyper serves one at a time per HTTP/1 connection).
    busy: u32,
    /// `clock` when it last became idle.
    idle_since: u64,
    opened: Instant,
    /// Whether it has received a request.
    served: bool,
    close: CancellationToken,
    /// Told to close for room; no longer counted against its client.
    closing: bool,
}

impl Entry {
    /// Whether it may be closed for room (see the module's doc).
    fn closable(&self, now: Instant, new_grace: Duration) -> bool {
        self.busy == 0
            && !self.closing
            && (self.served || now.saturating_duration_since(self.opened) >= new_grace)
    }
}

impl Table {
    /// Close the connection idle longest among the closable ones `pick` accepts; false if there
    /// is none.
    fn close_idle_longest(&mut self, new_grace: Duration, pick: impl Fn(&Entry) -> bool) -> bool {
        let now = Instant::now();
        let oldest = self
            .entries
            .values_mut()
            .filter(|e| e.closable(now, new_grace) && pick(e))
            .min_by_key(|e| e.idle_since);
        let Some(entry) = oldest else {
            return false;
        };
        tracing::debug!(
            client = %entry.client,
            "closing an idle HTTP connection to make room"
        );
        entry.closing = true;
        entry.close.cancel();
        true
    }
}

impl Connections {
    pub fn new(per_client: usize, new_grace: Duration) -> Arc<Connections> {
        Arc::new(Connections {
            per_client,
            new_grace,
            table: Mutex::new(Table::default()),
            idle: Notify::new(),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent whatever panicked while holding it (parking_lot's locks
        // are not poisoned): every change is one field write.
        self.table.lock()
    }

    /// Whether `client` may open one more connection: it is below its cap, or one of its idle
    /// connections (the one idle longest) was just told to close for it.
    pub fn room_for(&self, client: Client) -> bool {
        let mut table = self.table();
        let open = table
            .entries
            .values()
            .filter(|e| e.client == client && !e.closing)
            .count();
        open < self.per_client || table.close_idle_longest(self.new_grace, |e| e.client == client)
    }

    /// Register a new connection of `client`: idle (waiting for its first request) until a
    /// request arrives. `close` is cancelled when it must close for room; the caller cancels
    /// it too at shutdown (a child of the shutdown token).
    pub fn open(self: &Arc<Self>, client: Client, close: CancellationToken) -> Conn {
        let mut table = self.table();
        let id = table.next_id;
        table.next_id += 1;
        table.clock += 1;
        let idle_since = table.clock;
        table.entries.insert(
            id,
            Entry {
                client,
                busy: 0,
                idle_since,
                opened: Instant::now(),
                served: false,
                close: close.clone(),
                closing: false,
            },
        );
        Conn {
            id,
            client,
            close,
            table: self.clone(),
        }
    }

    /// Open connections (those told to close included, until they have).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().entries.len()
    }
}

impl MakeRoom for Connections {
    fn make_room(&self) -> bool {
        let mut table = self.table();
        // A connection told to close, and not caught serving a request meanwhile, is about to
        // free its slot: closing another would be one too many.
        let coming = table.entries.values().any(|e| e.closing && e.busy == 0);
        coming || table.close_idle_longest(self.new_grace, |_| true)
    }

    fn became_idle(&self) -> impl Future<Output = ()> + Send {
        // A request served, or the grace of the oldest silent new connection over.
        let grace_over = self
            .table()
            .entries
            .values()
            .filter(|e| !e.served && !e.closing && e.busy == 0)
            .map(|e| e.opened + self.new_grace)
            .min();
        let served = self.idle.notified();
        async move {
            match grace_over {
                Some(at) => tokio::select! {
                    _ = served => {}
                    _ = tokio::time::sleep_until(at) => {}
                },
                None => served.await,
            }
        }
    }
}

/// One open connection; dropping it takes it out of the table.
pub struct Conn {
    id: u64,
    client: Client,
    close: CancellationToken,
    table: Arc<Connections>,
}

impl Conn {
    pub fn client(&self) -> Client {
        self.client
    }

    /// Cancelled when the connection must close: for room, or at shutdown.
    pub fn close_token(&self) -> &CancellationToken {
        &self.close
    }

    /// Whether it is serving a request.
    pub fn is_busy(&self) -> bool {
        self.table
            .table()
            .entries
            .get(&self.id)
            .is_some_and(|e| e.busy > 0)
    }

    /// Mark it as serving a request until the returned guard is dropped (when the response has
    /// been sent, or the connection is gone).
    pub fn busy(&self) -> Busy {
        if let Some(e) = self.table.table().entries.get_mut(&self.id) {
            e.busy += 1;
            e.served = true;
        }
        Busy {
            id: self.id,
            table: self.table.clone(),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.table.table().entries.remove(&self.id);
    }
}

/// A request being served; see [`Conn::busy`].
pub struct Busy {
    id: u64,
    table: Arc<Connections>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut table = self.table.table();
        table.clock += 1;
        let now = table.clock;
        let Some(e) = table.entries.get_mut(&self.id) else {
            return;
        };
        e.busy = e.busy.saturating_sub(1);
        if e.busy == 0 {
            e.idle_since = now;
            drop(table);
            // Stored if nobody waits: the next wait for room sees it and looks again.
            self.table.idle.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(ip: &str) -> Client {
        Client::of(ip.parse().unwrap())
    }

    #[test]
    fn clients_are_addresses_and_ipv6_networks() {
        assert_eq!(client("192.0.2.1"), client("::ffff:192.0.2.1"));
        assert_ne!(client("192.0.2.1"), client("192.0.2.2"));
        assert_eq!(client("2001:db8:1:2::1"), client("2001:db8:1:2:ffff::9"));
        assert_ne!(client("2001:db8:1:2::1"), client("2001:db8:1:3::1"));
        assert_eq!(client("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(client("127.0.0.1").to_string(), "127.0.0.1");
    }

    /// Open a connection for `c` if the table lets it in.
    fn open(t: &Arc<Connections>, c: Client) -> Option<Conn> {
        t.room_for(c).then(|| t.open(c, CancellationToken::new()))
    }

    #[test]
    fn a_client_at_its_cap_replaces_its_own_idle_connection_idle_longest() {
        let t = Connections::new(3, Duration::ZERO);
        let (a, b) = (client("10.0.0.1"), client("10.0.0.2"));
        let a1 = open(&t, a).unwrap();
        let a2 = open(&t, a).unwrap();
        let a3 = open(&t, a).unwrap();
        let b1 = open(&t, b).unwrap();
        // a1 served a request after a2 and a3 opened: a2 is now idle longest.
        drop(a1.busy());
        let a4 = open(&t, a).unwrap();
        assert!(a2.close_token().is_cancelled());
        assert!(!a1.close_token().is_cancelled() && !a3.close_token().is_cancelled());
        assert!(
            !b1.close_token().is_cancelled(),
            "another client's is never taken"
        );
        // a2 is closing: it no longer counts, so a is at 3 (a1, a3, a4) again.
        let _busy = [a1.busy(), a3.busy(), a4.busy()];
        assert!(open(&t, a).is_none(), "at its cap, all serving: refused");
        assert!(open(&t, b).is_some(), "another client is not affected");
        drop(a2);
        assert!(
            open(&t, a).is_none(),
            "a2 gone changes nothing: still 3 serving"
        );
    }

    #[test]
    fn room_is_made_by_closing_the_connection_idle_longest_and_never_a_busy_one() {
        let t = Connections::new(10, Duration::ZERO);
        let c = client("10.0.0.1");
        let [c1, c2, c3] = [(); 3].map(|_| t.open(c, CancellationToken::new()));
        let serving = c1.busy();
        // c1 is serving: c2 (opened before c3) is idle longest.
        assert!(t.make_room());
        assert!(c2.close_token().is_cancelled());
        // c2 has not closed yet: its slot is coming, no second one is closed.
        assert!(t.make_room());
        assert!(!c3.close_token().is_cancelled());
        drop(c2);
        drop(serving);
        // c1 became idle after c3 did: c3 goes first.
        assert!(t.make_room());
        assert!(c3.close_token().is_cancelled() && !c1.close_token().is_cancelled());
        drop(c3);
        let _serving = c1.busy();
        assert!(!t.make_room(), "only a serving connection is left");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_closing_connection_caught_serving_does_not_count_as_room() {
        let t = Connections::new(10, Duration::ZERO);
        let c = client("10.0.0.1");
        let c1 = t.open(c, CancellationToken::new());
        let c2 = t.open(c, CancellationToken::new());
        assert!(t.make_room());
        assert!(c1.close_token().is_cancelled());
        // A request arrived on c1 just before it saw the signal: it finishes that request
        // first, so the next idle connection is closed instead of waiting for it.
        let _serving = c1.busy();
        assert!(t.make_room());
        assert!(c2.close_token().is_cancelled());
    }

    #[tokio::test]
    async fn a_new_connection_is_not_closed_before_its_grace_is_over() {
        let grace = Duration::from_millis(200);
        let t = Connections::new(1, grace);
        let c = client("10.0.0.1");
        let fresh = t.open(c, CancellationToken::new());
        assert!(
            !t.make_room() && !t.room_for(c),
            "its request may be on its way"
        );
        // The wait for room ends when the grace does (a condition, not a sleep of the test's).
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), t.became_idle())
            .await
            .expect("woken at the end of the grace");
        assert!(started.elapsed() >= grace - Duration::from_millis(20));
        assert!(t.room_for(c), "silent for its grace: it can go");
        assert!(fresh.close_token().is_cancelled());
        // A kept-alive one can go at once, however young.
        let t = Connections::new(1, Duration::from_secs(3600));
        let kept = t.open(c, CancellationToken::new());
        drop(kept.busy());
        assert!(t.make_room());
        assert!(kept.close_token().is_cancelled());
    }

    #[tokio::test]
    async fn becoming_idle_is_announced() {
        let t = Connections::new(10, Duration::from_secs(3600));
        let c1 = t.open(client("10.0.0.1"), CancellationToken::new());
        let busy = c1.busy();
        assert!(c1.is_busy());
        let waiting = t.became_idle();
        drop(busy);
        assert!(!c1.is_busy());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("announced");
    }
}
