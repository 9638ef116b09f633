//! The HTTP server: the metrics endpoint, /-/healthy and /-/ready, and nothing else.
//!
//! Its own accept loop (rather than `axum::serve`) controls each connection: TLS (with a
//! handshake timeout), hyper's header read timeout (slow or half-open clients are cut), a cap on
//! open connections, and graceful shutdown. The `--web.config.file` guard (rate limit, response
//! headers, basic auth) wraps every route, as exporter-toolkit does.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{OnceCell, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    metrics::{Metrics, gzip_response},
    webconfig::{RateLimit, Web},
};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client must send a request's whole header within this time, also on an idle keep-alive
/// connection (hyper starts the timer when it waits for a request head).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake must finish within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most; beyond it, new ones wait in the kernel's listen backlog.
pub const MAX_CONNECTIONS: usize = 512;
/// Metrics responses being built at once: each takes a blocking thread (the pool is shared with
/// the sampler and the gateway), so a scrape storm must not occupy them all.
pub const MAX_CONCURRENT_SCRAPES: usize = 4;
/// How long a scrape waits for its turn before a 503 with Retry-After.
pub const SCRAPE_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// At shutdown, how long in-flight requests get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// bcrypt verifications at once: each takes a blocking thread for 50-250 ms.
const MAX_CONCURRENT_BCRYPT: usize = 2;
/// Cached (user, password) outcomes; the cache is cleared when full.
const AUTH_CACHE_SIZE: usize = 256;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    /// Set once the socket listens and the eBPF programs are attached.
    pub ready: Arc<AtomicBool>,
    /// Bounds concurrent metrics encodes (MAX_CONCURRENT_SCRAPES).
    pub scrapes: Arc<Semaphore>,
}

impl AppState {
    pub fn new(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> AppState {
        AppState {
            metrics,
            ready,
            scrapes: Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES)),
        }
    }
}

/// The routes, wrapped in the web configuration's guard when there is one.
pub fn router(telemetry_path: &str, state: AppState, web: Option<&Web>) -> Router {
    let app = Router::new()
        .route(telemetry_path, get(metrics))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .with_state(state);
    match web.map(Guard::new) {
        // Router::layer also covers the fallback: unknown paths need credentials too.
        Some(guard) if guard.is_active() => {
            app.layer(middleware::from_fn_with_state(Arc::new(guard), guarded))
        }
        _ => app,
    }
}

/// How connections are served.
#[derive(Clone)]
pub struct ServeOptions {
    pub tls: Option<TlsAcceptor>,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
}

impl ServeOptions {
    pub fn new(web: Option<&Web>) -> ServeOptions {
        let test_timeout = test_hook_timeout();
        ServeOptions {
            tls: web.and_then(|w| w.tls.clone()).map(TlsAcceptor::from),
            header_read_timeout: test_timeout.unwrap_or(HEADER_READ_TIMEOUT),
            handshake_timeout: test_timeout.unwrap_or(TLS_HANDSHAKE_TIMEOUT),
        }
    }
}

/// Test hook: `APPTHEUS_TEST_HTTP_TIMEOUT_MS` shortens the header read and TLS handshake
/// timeouts, so a test of slow clients does not wait the full 10 s.
fn test_hook_timeout() -> Option<Duration> {
    std::env::var("APPTHEUS_TEST_HTTP_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// Serve until `shutdown` is cancelled, then give in-flight requests SHUTDOWN_GRACE to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.context("HTTP connection slots")?,
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: log, back off briefly, keep serving.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (app, opts, shutdown) = (app.clone(), opts.clone(), shutdown.clone());
        connections.spawn(async move {
            connection(stream, app, opts, shutdown).await;
            drop(permit);
        });
    }
    connections.close();
    // Each connection stops within SHUTDOWN_GRACE of the cancellation; this is a backstop.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, connections.wait()).await;
    Ok(())
}

/// Serve one accepted connection, over TLS when configured.
async fn connection(
    stream: TcpStream,
    app: Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = &opts.tls else {
        return http1(stream, app, &opts, shutdown).await;
    };
    let handshake = async {
        if looks_like_plain_http(&stream).await {
            // Go's TLS server answers the same way: a clear error instead of garbage.
            let mut stream = stream;
            let _ = stream
                .write_all(
                    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
                      Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
                )
                .await;
            let _ = stream.shutdown().await;
            // Read what the client sent before closing: closing with unread data would send a
            // reset, which can destroy the answer before the client reads it.
            let mut sink = [0u8; 4096];
            let drain = async {
                let mut total = 0;
                while let Ok(n @ 1..) = stream.read(&mut sink).await {
                    total += n;
                    if total > 64 * 1024 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            return None;
        }
        match acceptor.accept(stream).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
        }
    };
    let tls = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(opts.handshake_timeout, handshake) => match r {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
    };
    http1(tls, app, &opts, shutdown).await
}

/// Whether the first bytes are an HTTP request line rather than a TLS record (which starts with
/// 0x16 for a handshake).
async fn looks_like_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

async fn http1<I>(io: I, app: Router, opts: &ServeOptions, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            // Finish the request in flight (if any), then close.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = res {
        // Timeouts, resets and malformed requests: the client's problem, not the daemon's.
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

// ---------------------------------------------------------------------------------- the guard

/// What `--web.config.file` asks of every request: rate limit, extra headers, basic auth.
struct Guard {
    headers: Vec<(HeaderName, HeaderValue)>,
    limiter: Option<Mutex<TokenBucket>>,
    auth: Option<BasicAuth>,
}

impl Guard {
    fn new(web: &Web) -> Guard {
        let c = &web.config;
        Guard {
            headers: c
                .headers
                .iter()
                // Validated when the file was parsed.
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            limiter: c.rate_limit.map(|r| Mutex::new(TokenBucket::new(r))),
            auth: (!c.users.is_empty()).then(|| BasicAuth::new(&c.users)),
        }
    }

    fn is_active(&self) -> bool {
        !self.headers.is_empty() || self.limiter.is_some() || self.auth.is_some()
    }
}

async fn guarded(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let mut resp = guard_inner(&guard, req, next).await;
    for (k, v) in &guard.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

async fn guard_inner(guard: &Guard, req: Request, next: Next) -> Response {
    if let Some(limiter) = &guard.limiter {
        let allowed = limiter.lock().is_ok_and(|mut l| l.allow(Instant::now()));
        if !allowed {
            return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
        }
    }
    if let Some(auth) = &guard.auth {
        let ok = match basic_credentials(req.headers()) {
            Some((user, pass)) => auth.check(&user, &pass).await,
            None => false,
        };
        if !ok {
            let mut resp = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            return resp;
        }
    }
    next.run(req).await
}

/// The user and password of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Go's `rate.Limiter`: a bucket of `burst` tokens, refilled by one per `interval`.
struct TokenBucket {
    interval: Duration,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(r: RateLimit) -> TokenBucket {
        TokenBucket {
            interval: r.interval,
            burst: f64::from(r.burst),
            tokens: f64::from(r.burst),
            last: Instant::now(),
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() / self.interval.as_secs_f64()).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type Digest = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Compare without an early exit, so timing does not tell how much matched.
fn ct_eq(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Basic auth against bcrypt hashes. bcrypt is slow by design, so outcomes are cached by a
/// SHA-256 of (user, hash, password) (exporter-toolkit does the same): Prometheus' scrapes, with
/// the same credentials each time, cost one bcrypt in all.
struct BasicAuth {
    /// (SHA-256 of the user name, bcrypt hash).
    users: Vec<(Digest, String)>,
    /// Highest cost among the users' hashes: the dummy hash for unknown users uses it, so their
    /// timing matches a known user's.
    max_cost: u32,
    dummy: OnceCell<String>,
    cache: Mutex<HashMap<Digest, bool>>,
    bcrypt: Semaphore,
}

impl BasicAuth {
    fn new(users: &std::collections::BTreeMap<String, String>) -> BasicAuth {
        BasicAuth {
            users: users
                .iter()
                .map(|(u, h)| (sha256(&[u.as_bytes()]), h.clone()))
                .collect(),
            max_cost: users
                .values()
                .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
                .map(|p| p.get_cost())
                .max()
                .unwrap_or(bcrypt::DEFAULT_COST),
            dummy: OnceCell::new(),
            cache: Mutex::new(HashMap::new()),
            bcrypt: Semaphore::new(MAX_CONCURRENT_BCRYPT),
        }
    }

    async fn check(&self, user: &str, password: &str) -> bool {
        let user_digest = sha256(&[user.as_bytes()]);
        // Look at every entry, so the time taken does not depend on which user matched.
        let mut found: Option<&str> = None;
        for (digest, hash) in &self.users {
            if ct_eq(digest, &user_digest) {
                found = Some(hash);
            }
        }
        let hash = match found {
            Some(h) => h.to_string(),
            // An unknown user still costs one bcrypt, so timing does not reveal valid names.
            None => match self.dummy_hash().await {
                Some(h) => h,
                None => return false,
            },
        };
        let key = sha256(&[user.as_bytes(), hash.as_bytes(), password.as_bytes()]);
        if let Some(ok) = self.cached(&key) {
            return ok && found.is_some();
        }
        let Ok(_permit) = self.bcrypt.acquire().await else {
            return false;
        };
        // Another request with the same credentials may have filled the cache meanwhile.
        if let Some(ok) = self.cached(&key) {
            return ok && found.is_some();
        }
        let password = password.to_string();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= AUTH_CACHE_SIZE {
                cache.clear();
            }
            cache.insert(key, ok);
        }
        ok && found.is_some()
    }

    fn cached(&self, key: &Digest) -> Option<bool> {
        self.cache.lock().ok()?.get(key).copied()
    }

    async fn dummy_hash(&self) -> Option<String> {
        let cost = self.max_cost;
        self.dummy
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || bcrypt::hash("apptheus-no-such-user", cost))
                    .await
                    .map_err(|_| ())?
                    .map_err(|_| ())
            })
            .await
            .ok()
            .cloned()
    }
}

// ------------------------------------------------------------------------------- the handlers

async fn ready(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "Ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Not ready: starting\n").into_response()
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                matches!(
                    p.trim().replace(' ', "").as_str(),
                    "q=0" | "q=0.0" | "q=0.00" | "q=0.000"
                )
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // A scrape storm queues here, briefly, instead of piling up blocking encodes.
    let permit =
        tokio::time::timeout(SCRAPE_QUEUE_TIMEOUT, state.scrapes.clone().acquire_owned()).await;
    let Ok(Ok(permit)) = permit else {
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent scrapes\n",
        )
            .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    };
    let gz = accepts_gzip(&headers);
    // The daemon's families read /proc/self, and rendering or compressing a fresh snapshot is
    // CPU work: keep both off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        // Held by the work itself: a client that goes away does not free the slot early.
        let _permit = permit;
        let daemon = state.metrics.encode_daemon();
        let snapshot = state.metrics.snapshot();
        // The containers' part is the pass's shared buffer, not a copy.
        if gz {
            gzip_response(&daemon, snapshot.deflated()).to_vec()
        } else {
            vec![Bytes::from(daemon), snapshot.text()]
        }
    })
    .await;
    let Ok(body) = body else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response();
    };
    let length = body.iter().map(Bytes::len).sum::<usize>();
    let chunks =
        futures_util::stream::iter(body.into_iter().map(Ok::<_, std::convert::Infallible>));
    let mut resp = Response::new(Body::from_stream(chunks));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if gz {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        m
    }

    use crate::webconfig::WebConfig;
    use tower::ServiceExt as _;

    fn state(scrape_permits: usize) -> AppState {
        AppState {
            metrics: Arc::new(Metrics::new().unwrap()),
            ready: Arc::new(AtomicBool::new(true)),
            scrapes: Arc::new(Semaphore::new(scrape_permits)),
        }
    }

    fn web(yaml: &str) -> Web {
        Web {
            config: WebConfig::parse(yaml).unwrap(),
            tls: None,
        }
    }

    /// GET `path` through `app`: status and the named header.
    async fn get(app: &Router, path: &str, auth: Option<&str>, header: &str) -> (u16, String) {
        let mut req = Request::builder().uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let value = resp
            .headers()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (resp.status().as_u16(), value)
    }

    fn basic(user: &str, pass: &str) -> String {
        use base64::Engine as _;
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {creds}")
    }

    #[tokio::test]
    async fn auth_covers_every_path_and_headers_every_response() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let w = web(&format!(
            "basic_auth_users:\n  alice: '{hash}'\n  bob: '{hash}'\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ));
        let app = router("/metrics", state(4), Some(&w));
        let good = basic("alice", "pw");
        for path in ["/metrics", "/-/healthy", "/-/ready", "/elsewhere"] {
            let (status, challenge) = get(&app, path, None, "www-authenticate").await;
            assert_eq!((status, challenge.as_str()), (401, "Basic"), "{path}");
            for bad in [
                basic("alice", "nope"),
                basic("carol", "pw"),
                "Basic !!".into(),
            ] {
                assert_eq!(get(&app, path, Some(&bad), "").await.0, 401, "{path} {bad}");
            }
        }
        // Twice: the second answer comes from the cache.
        for _ in 0..2 {
            assert_eq!(get(&app, "/metrics", Some(&good), "").await.0, 200);
        }
        assert_eq!(get(&app, "/elsewhere", Some(&good), "").await.0, 404);
        assert_eq!(
            get(
                &app,
                "/-/healthy",
                Some(&basic("bob", "pw")),
                "x-frame-options"
            )
            .await,
            (200, "deny".to_string())
        );
        assert_eq!(
            get(&app, "/-/healthy", None, "x-frame-options").await.1,
            "deny",
            "on a 401 too"
        );
    }

    #[tokio::test]
    async fn rate_limit_answers_429_past_the_burst() {
        let w = web("rate_limit:\n  interval: 1h\n  burst: 3\n");
        let app = router("/metrics", state(4), Some(&w));
        let statuses: Vec<u16> = statuses(&app, 5).await;
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
    }

    async fn statuses(app: &Router, n: usize) -> Vec<u16> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(get(app, "/-/healthy", None, "").await.0);
        }
        out
    }

    #[test]
    fn token_bucket_refills_at_the_interval() {
        let mut b = TokenBucket::new(RateLimit {
            interval: Duration::from_secs(1),
            burst: 2,
        });
        let t0 = b.last;
        assert!(b.allow(t0) && b.allow(t0) && !b.allow(t0));
        assert!(!b.allow(t0 + Duration::from_millis(500)));
        assert!(b.allow(t0 + Duration::from_millis(1000)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.allow(later) && b.allow(later) && !b.allow(later));
    }

    #[tokio::test]
    async fn scrapes_over_the_bound_get_503_with_retry_after() {
        // No free slot: the scrape waits SCRAPE_QUEUE_TIMEOUT, then gives up.
        let app = router("/metrics", state(0), None);
        let (status, retry) = get(&app, "/metrics", None, "retry-after").await;
        assert_eq!((status, retry.as_str()), (503, "1"));
        // Health checks are not scrapes: unaffected.
        assert_eq!(get(&app, "/-/healthy", None, "").await.0, 200);
        // One slot, used in turn: every scrape is served and gives its slot back.
        let app = router("/metrics", state(1), None);
        for _ in 0..3 {
            assert_eq!(get(&app, "/metrics", None, "").await.0, 200);
        }
    }

    #[test]
    fn basic_credentials_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&basic("u", "p:q")).unwrap(),
        );
        assert_eq!(basic_credentials(&h), Some(("u".into(), "p:q".into())));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic dTpw"),
        );
        assert_eq!(basic_credentials(&h), Some(("u".into(), "p".into())));
        for bad in ["Bearer dTpw", "Basic", "Basic ???", "Basic dXNlcg=="] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
            assert_eq!(basic_credentials(&h), None, "{bad}");
        }
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&h("gzip")));
        assert!(accepts_gzip(&h("deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
