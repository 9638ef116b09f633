//! HTTP fairness under hostile clients, against a real daemon over real sockets: a client that
//! holds hundreds of idle keep-alive connections does not keep a real Prometheus out, and a
//! flood of wrong passwords does not push the right one out of the auth cache.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    Client, Daemon, bin,
    prometheus::{Answer, Prometheus},
};

/// The daemon's limits (`apptheus::http`), as docs/http.md states them.
const MAX_CONNECTIONS: usize = 512;
const MAX_CONNECTIONS_PER_CLIENT: usize = 64;

/// A TCP connection to the daemon from the loopback address `from` (all of 127/8 is local), so
/// that one test can be several clients.
fn connect_from(from: Ipv4Addr, port: u16) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )
    .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    connect(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
    )
    .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    TcpStream::from(fd)
}

/// One keep-alive request on `s`; whether it was answered 200 (the connection stays open).
fn one_request(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: apptheus\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"Healthy\n") {
        match s.read(&mut buf) {
            Ok(n @ 1..) => answer.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    answer.starts_with(b"HTTP/1.1 200")
}

/// Whether the server has not closed `s` (nothing to read yet, no EOF, no reset).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let open =
        matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// `n` connections from `from`, each with one request answered, then left idle.
fn idle_connections(from: Ipv4Addr, port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = connect_from(from, port);
            assert!(one_request(&mut s), "request {i} from {from} not answered");
            s
        })
        .collect()
}

/// Keep the connections the server has not closed; how many those are, once the count has
/// settled (closing is asynchronous).
fn settled_open(conns: &mut Vec<TcpStream>) -> usize {
    let mut last = usize::MAX;
    let settled = common::eventually(Duration::from_secs(10), || {
        conns.retain(still_open);
        let now = conns.len();
        let same = now == last;
        last = now;
        same.then_some(now)
    });
    settled.expect("the count of open connections settles")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Wait for a successful scrape taken after `since` (unix seconds): how long after `since` it
/// was taken.
fn scraped_after(prom: &Prometheus, since: f64, within: Duration) -> f64 {
    let expr = format!("timestamp(up{{job=\"apptheus\"}} == 1) > {since}");
    let a = prom.query_until(&expr, within, Answer::success_with_data);
    assert!(
        a.success_with_data(),
        "no successful scrape within {within:?} ({a:?}):\n{}",
        prom.log()
    );
    let taken: f64 = a.series[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a timestamp");
    taken - since
}

/// One client opens 512 idle keep-alive connections (each sent one request); then eight
/// addresses do, filling the server. A real Prometheus (1 s interval, 1 s timeout) keeps
/// scraping: within 5 s of each flood, well before the idle connections' 10 s timeout, it has
/// a successful scrape.
#[test]
fn idle_connections_cannot_keep_prometheus_out() {
    let d = Daemon::start(&[]);
    let prom = Prometheus::start(&format!("127.0.0.1:{}", d.port));
    scraped_after(&prom, 0.0, Duration::from_secs(30));

    // One client, on Prometheus's own address: it keeps 64 connections at most, its new ones
    // replacing its own idle ones.
    let started = unix_now();
    let mut same_address = idle_connections(Ipv4Addr::LOCALHOST, d.port, MAX_CONNECTIONS);
    let flooded = unix_now();
    let open = settled_open(&mut same_address);
    println!(
        "one client: {MAX_CONNECTIONS} idle connections opened in {:.2} s, {open} still open",
        flooded - started
    );
    assert!(
        (MAX_CONNECTIONS_PER_CLIENT - 1..=MAX_CONNECTIONS_PER_CLIENT).contains(&open),
        "{open} open (Prometheus shares the address and may hold one)"
    );
    let delay = scraped_after(&prom, flooded, Duration::from_secs(5));
    println!("one client: Prometheus scraped successfully {delay:.2} s after the flood");

    // Eight more addresses, 64 idle connections each: with the first client's, more than the
    // server's 512; the connections idle longest are closed for the newcomers.
    let started = unix_now();
    let mut others: Vec<TcpStream> = (2..10u8)
        .flat_map(|i| {
            idle_connections(
                Ipv4Addr::new(127, 0, 0, i),
                d.port,
                MAX_CONNECTIONS_PER_CLIENT,
            )
        })
        .collect();
    let flooded = unix_now();
    let open = settled_open(&mut others) + settled_open(&mut same_address);
    println!(
        "nine clients: {} idle connections opened in {:.2} s, {open} still open",
        8 * MAX_CONNECTIONS_PER_CLIENT,
        flooded - started
    );
    assert!(open <= MAX_CONNECTIONS, "{open} open: over the bound");
    let delay = scraped_after(&prom, flooded, Duration::from_secs(5));
    println!("nine clients: Prometheus scraped successfully {delay:.2} s after the flood");
    assert_eq!(d.get("/-/healthy").0, 200);
    drop((same_address, others, prom));
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// bcrypt verifications the daemon has run (its debug log says each).
fn bcrypt_runs(d: &Daemon) -> usize {
    d.log_text()
        .matches("basic auth: bcrypt verification")
        .count()
}

/// 300 wrong passwords (more than the cache's 256 entries) do not push the right one out of
/// the auth cache: it is answered after them without a bcrypt verification (the daemon's log
/// counts them), in a fraction of one verification's time.
#[test]
fn wrong_passwords_cannot_push_the_right_one_out_of_the_cache() {
    const PASSWORD: &str = "s3cret";
    // Prometheus's hash at cost 12: a verification is slow enough to tell from a cache hit.
    // The flood targets a cost-4 user so that 300 verifications take seconds, not minutes.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("web.yml");
    std::fs::write(
        &config,
        format!(
            "basic_auth_users:\n  prometheus: '{}'\n  other: '{}'\n",
            bcrypt::hash(PASSWORD, 12).unwrap(),
            bcrypt::hash("other", 4).unwrap()
        ),
    )
    .unwrap();
    let mut client = Client::plain();
    client.authorization = Some(basic("other", "other"));
    let d = Daemon::start_client(
        &[
            &format!("--trust.path={}", bin("apptheus-exec").display()),
            &format!("--web.config.file={}", config.display()),
        ],
        &[],
        client,
    );
    let url = d.url("/-/healthy");
    let get = |auth: &str| -> (u16, Duration) {
        // A new connection each time: nothing but the cache can make it quick.
        let agent = Client::plain().agent;
        let t = Instant::now();
        let status = agent
            .get(&url)
            .header("Authorization", auth)
            .call()
            .map_or(0, |r| r.status().as_u16());
        (status, t.elapsed())
    };
    let right = basic("prometheus", PASSWORD);
    let before = bcrypt_runs(&d);
    let (status, uncached) = get(&right);
    assert_eq!(status, 200);
    assert_eq!(bcrypt_runs(&d), before + 1, "the first check verifies");

    // 300 wrong passwords from 3 clients at once (a bcrypt queue of 2 serves them in turn).
    let wrong: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let get = &get;
                s.spawn(move || {
                    (0..100)
                        .map(|i| get(&basic("other", &format!("wrong {w} {i}"))).0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(wrong.iter().all(|&s| s == 401), "{wrong:?}");
    let verified = bcrypt_runs(&d);
    assert!(verified >= before + 301, "each wrong password is verified");

    let (status, cached) = get(&right);
    assert_eq!(status, 200);
    println!(
        "auth cache: the right password took {:.1} ms uncached (bcrypt cost 12), {:.1} ms after 300 wrong ones",
        uncached.as_secs_f64() * 1e3,
        cached.as_secs_f64() * 1e3
    );
    assert_eq!(bcrypt_runs(&d), verified, "served from the cache");
    assert!(
        cached * 4 < uncached,
        "a cache hit ({cached:?}) is not much faster than bcrypt ({uncached:?})"
    );
}
