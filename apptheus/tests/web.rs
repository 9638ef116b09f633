//! `--web.config.file`: TLS and basic auth in the exporter-toolkit file format, against a real
//! daemon with real clients (ureq over rustls, curl, a raw TCP socket, a real Prometheus).
//!
//! Certificates are made at test time with the `openssl` CLI (a CA, a server certificate for
//! 127.0.0.1 and localhost, a client certificate); bcrypt hashes with the `bcrypt` crate. Every
//! test runs as root and fails (never skips) when a tool is missing: `cargo xtask setup --test`
//! installs them. After each test the daemon has removed its socket and cgroups.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    Client, Daemon, bin, eventually,
    pki::Pki,
    prometheus::{Answer, Prometheus, tool},
};

const USER: &str = "prometheus";
const PASSWORD: &str = "s3cret pass:word";

// ------------------------------------------------------------------------------------- helpers

/// `basic_auth_users` with USER/PASSWORD at bcrypt cost 10 (exporter-toolkit's example cost).
fn users_yaml() -> String {
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    format!("basic_auth_users:\n  {USER}: '{hash}'\n")
}

fn start(config: &Path, client: Client, env: &[(&str, &str)]) -> Daemon {
    let flag = format!("--web.config.file={}", config.display());
    let trust = format!("--trust.path={}", bin("apptheus-exec").display());
    Daemon::start_client(&[trust.as_str(), flag.as_str()], env, client)
}

/// GET `path` with `client`: status and the named response header (0 when no response).
fn get_with(d: &Daemon, client: &Client, path: &str, header: &str) -> (u16, Option<String>) {
    let url = format!("{}://127.0.0.1:{}{path}", client.scheme, d.port);
    let mut req = client.agent.get(&url);
    if let Some(a) = &client.authorization {
        req = req.header("Authorization", a);
    }
    match req.call() {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get(header)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ),
        Err(e) => {
            println!("GET {url}: {e}");
            (0, None)
        }
    }
}

/// Stop the daemon: it removes its socket; then the test's cleanup (Daemon's Drop) removes the
/// `--cgroup.parent` directories, which must succeed: no process is left in them.
fn stop_clean(mut d: Daemon) {
    assert!(d.stop().success(), "daemon exit:\n{}", d.log_text());
    assert!(!d.socket.exists(), "socket file left behind");
    let dirs = d.cgroup_dirs();
    drop(d);
    let left: Vec<_> = dirs.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

/// `curl` against the daemon: its exit code and HTTP status (000 when none).
fn curl(d: &Daemon, pki: &Pki, args: &[&str], path: &str) -> (i32, String) {
    let out = Command::new(tool("curl", "curl"))
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(pki.path("ca.pem"))
        .args(args)
        .arg(format!("https://127.0.0.1:{}{path}", d.port))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    println!(
        "curl {args:?}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Whether the server closed `s` (EOF or reset) within `within`; false if it is still open.
fn closed_by_server(s: &mut impl std::io::Read, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                println!("read: {e}");
                return true;
            }
        }
    }
    false
}

// --------------------------------------------------------------------------------------- tests

#[test]
fn tls_and_basic_auth() {
    let pki = Pki::new();
    // Relative names: resolved against the configuration file's directory.
    let config = pki.config(&format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
         http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n{}",
        users_yaml()
    ));
    let good = pki.client(Some((USER, PASSWORD)), false);
    let d = start(&config, good.clone(), &[]);

    // Good credentials: 200, with a container visible.
    let mut w = d.exec_workload(&["ready", "wait"]);
    w.ready();
    let label = format!("container=\"apptheus-exec_{}\"", w.pid());
    let seen = eventually(Duration::from_secs(5), || {
        d.metrics().contains(&label).then_some(())
    });
    assert!(seen.is_some(), "{label} not in /metrics over TLS");
    let (status, nosniff) = get_with(&d, &good, "/metrics", "x-content-type-options");
    assert_eq!(status, 200);
    assert_eq!(nosniff.as_deref(), Some("nosniff"), "configured header");

    // Wrong password, unknown user, no credentials, another scheme: 401 with a challenge.
    for (what, client) in [
        ("wrong password", pki.client(Some((USER, "wrong")), false)),
        (
            "unknown user",
            pki.client(Some(("nobody", PASSWORD)), false),
        ),
        ("no credentials", pki.client(None, false)),
    ] {
        for path in ["/metrics", "/-/healthy", "/-/ready", "/nope"] {
            let (status, challenge) = get_with(&d, &client, path, "www-authenticate");
            assert_eq!(status, 401, "{what} {path}");
            assert_eq!(challenge.as_deref(), Some("Basic"), "{what} {path}");
        }
    }
    // What bcrypt (cost 10) costs once, and a cached check on every later request (printed
    // for the record; no timing assertion).
    let t = Instant::now();
    assert_eq!(
        get_with(
            &d,
            &pki.client(Some((USER, "fresh")), false),
            "/-/healthy",
            ""
        )
        .0,
        401
    );
    let uncached = t.elapsed();
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(get_with(&d, &good, "/-/healthy", "").0, 200);
    }
    println!(
        "basic auth: uncached check (new TLS connection + bcrypt cost 10) {:.0} ms; cached, on a kept-alive connection {:.1} ms per request",
        uncached.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );
    let mut bearer = pki.client(None, false);
    bearer.authorization = Some("Bearer abc".into());
    assert_eq!(get_with(&d, &bearer, "/metrics", "").0, 401);
    // With credentials, everything behaves as without a config.
    assert_eq!(get_with(&d, &good, "/-/healthy", "").0, 200);
    assert_eq!(get_with(&d, &good, "/nope", "").0, 404);

    // Plain HTTP to the TLS port: a clear 400 (as Go answers), the connection closed.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.0 400") && answer.contains("HTTPS server"),
        "plain HTTP on the TLS port got {answer:?}"
    );
    // A plain-HTTP client gets that 400; garbage (neither TLS nor HTTP) just a closed connection.
    assert_eq!(get_with(&d, &Client::plain(), "/metrics", "").0, 400);
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08])
        .unwrap();
    assert!(closed_by_server(&mut s, Duration::from_secs(10)));
    // The daemon stays up and serves the next TLS request.
    assert_eq!(get_with(&d, &good, "/metrics", "").0, 200);

    w.go();
    assert!(w.wait().success());
    stop_clean(d);
}

#[test]
fn tls13_minimum_refuses_a_tls12_client() {
    let pki = Pki::new();
    let config = pki.config(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: TLS13\n",
    );
    let d = start(&config, pki.client(None, false), &[]);
    // curl (OpenSSL) limited to TLS 1.2: the handshake fails (curl exit 35), no HTTP status.
    let (code, status) = curl(&d, &pki, &["--tlsv1.2", "--tls-max", "1.2"], "/-/healthy");
    assert_ne!(code, 0, "a TLS 1.2-only client was served");
    assert_eq!(status, "000");
    let (code, status) = curl(&d, &pki, &["--tlsv1.3"], "/-/healthy");
    assert_eq!((code, status.as_str()), (0, "200"));
    stop_clean(d);

    // The default minimum (TLS12) serves that same TLS 1.2-only client.
    let config =
        pki.config("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n");
    let d = start(&config, pki.client(None, false), &[]);
    let (code, status) = curl(&d, &pki, &["--tlsv1.2", "--tls-max", "1.2"], "/-/healthy");
    assert_eq!((code, status.as_str()), (0, "200"));
    stop_clean(d);
}

#[test]
fn client_certificates_when_required() {
    let pki = Pki::new();
    let config = pki.config(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n",
    );
    let d = start(&config, pki.client(None, true), &[]);
    assert_eq!(d.get("/metrics").0, 200, "with a client certificate");
    assert_eq!(get_with(&d, &pki.client(None, false), "/metrics", "").0, 0);
    let (code, _) = curl(&d, &pki, &[], "/-/healthy");
    assert_ne!(code, 0, "served without a client certificate");
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let (code, status) = curl(
        &d,
        &pki,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        "/-/healthy",
    );
    assert_eq!((code, status.as_str()), (0, "200"));
    stop_clean(d);
}

/// Half a request header, then silence: the server cuts the connection after the header read
/// timeout (shortened to 1.5 s through the test hook), on plain HTTP and over TLS, and a silent
/// TLS connection after the handshake timeout; scrapes keep working meanwhile.
#[test]
fn slow_clients_are_cut_while_scrapes_go_on() {
    let pki = Pki::new();
    let timeout_env = [("APPTHEUS_TEST_HTTP_TIMEOUT_MS", "1500")];
    let within = Duration::from_secs(10);

    // Plain HTTP (no config file).
    let trust = format!("--trust.path={}", bin("apptheus-exec").display());
    let d = Daemon::start_client(&[trust.as_str()], &timeout_env, Client::plain());
    let mut slow = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let mut silent = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(d.get("/metrics").0, 200, "a scrape while a client stalls");
    let started = Instant::now();
    assert!(
        closed_by_server(&mut slow, within),
        "half a header: still open"
    );
    assert!(closed_by_server(&mut silent, within), "silent: still open");
    println!(
        "plain HTTP: stalled connections closed {:.1} s after the scrape",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(d.get("/metrics").0, 200);
    stop_clean(d);

    // TLS: a finished handshake then half a header, and a connection that never says hello.
    let config =
        pki.config("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n");
    let d = start(&config, pki.client(None, false), &timeout_env);
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    use rustls::pki_types::pem::PemObject as _;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(tls_config), "localhost".try_into().unwrap())
        .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut slow = rustls::StreamOwned::new(conn, tcp);
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    slow.flush().unwrap();
    let mut silent = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(d.get("/metrics").0, 200, "a TLS scrape while clients stall");
    assert!(closed_by_server(&mut slow, within), "TLS half header: open");
    assert!(closed_by_server(&mut silent, within), "no handshake: open");
    assert_eq!(d.get("/metrics").0, 200);
    stop_clean(d);
}

/// Many scrapes at once: each gets 200 or, past the bound, 503 with Retry-After; the daemon
/// stays healthy. Prints the counts (no timing assertion).
#[test]
fn a_scrape_storm_is_bounded() {
    let d = Daemon::start(&[]);
    let url = d.url("/metrics");
    let started = Instant::now();
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = Client::plain().agent;
                (0..8)
                    .map(|_| match agent.get(&url).call() {
                        Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
                        Err(_) => (0, false),
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(u16, bool)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy = results.iter().filter(|r| r.0 == 503).count();
    println!(
        "scrape storm: {} requests from 64 clients in {:.2} s: {ok} x 200, {busy} x 503",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(ok + busy, results.len(), "other outcomes: {results:?}");
    assert!(
        results.iter().all(|r| r.0 != 503 || r.1),
        "503 without Retry-After"
    );
    assert!(ok > 0);
    assert_eq!(d.get("/-/healthy").0, 200);
    stop_clean(d);
}

#[test]
fn bad_web_config_exits_2_naming_the_flag() {
    common::require_root();
    let pki = Pki::new();
    let hash = bcrypt::hash("x", 4).unwrap();
    let cases = [
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  extra: 1\n",
            "extra",
        ),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: server.key\n",
            "missing.pem",
        ),
        ("tls_server_config:\n  cert_file: server.pem\n", "key"),
        // A key that is not the certificate's.
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: client.key\n",
            "key",
        ),
        (
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
            "cert",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: TLS10\n",
            "min_version",
        ),
        ("basic_auth_users:\n  alice: not-a-hash\n", "alice"),
        ("basic_auth_users: [a, b]\n", "basic_auth_users"),
        ("{{{{", "--web.config.file"),
    ];
    let mut cases: Vec<(String, &str)> = cases.iter().map(|(t, w)| (t.to_string(), *w)).collect();
    cases.push((
        format!(
            "basic_auth_users:\n  alice: '{hash}'\nhttp_server_config:\n  headers:\n    Server: x\n"
        ),
        "Server",
    ));
    for (text, want) in cases {
        let config = pki.config(&text);
        let out = Command::new(bin("apptheus"))
            .arg(format!("--web.config.file={}", config.display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg(format!(
                "--socket.path={}",
                pki.path("never.sock").display()
            ))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{text:?} -> {err}");
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(err.contains("--web.config.file"), "{text:?}: {err}");
        assert!(
            err.contains(&config.display().to_string()),
            "{text:?}: {err}"
        );
        assert!(err.contains(want), "{text:?}: {err} lacks {want:?}");
        assert!(!pki.path("never.sock").exists());
    }
    // A file that does not exist.
    let out = Command::new(bin("apptheus"))
        .arg("--web.config.file=/nonexistent/web.yml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--web.config.file /nonexistent/web.yml")
    );
}

// -------------------------------------------------------------- a real Prometheus over HTTPS

/// Prometheus scrapes the daemon with `scheme: https`, `tls_config.ca_file` and `basic_auth`:
/// the target is up and the daemon's series arrive.
#[test]
fn real_prometheus_scrapes_over_tls_with_basic_auth() {
    let pki = Pki::new();
    let config = pki.config(&format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n{}",
        users_yaml()
    ));
    let d = start(&config, pki.client(Some((USER, PASSWORD)), false), &[]);
    let prom = Prometheus::start_with(
        &format!("127.0.0.1:{}", d.port),
        &format!(
            "scheme: https\ntls_config:\n  ca_file: {}\nbasic_auth:\n  username: {USER}\n  \
             password: '{PASSWORD}'\n",
            pki.path("ca.pem").display()
        ),
    );
    for expr in [
        "up{job=\"apptheus\"} == 1",
        "apptheus_build_info{job=\"apptheus\"}",
    ] {
        let a = prom.query_until(expr, Duration::from_secs(30), Answer::success_with_data);
        assert!(
            a.success_with_data(),
            "Prometheus did not scrape the daemon over TLS with basic auth ({expr}: {a:?}):\n{}",
            prom.log()
        );
    }
    drop(prom);
    stop_clean(d);
}
