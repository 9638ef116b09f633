//! What `--web.config.file` asks of every request, on every path (the 404s too, as in
//! exporter-toolkit): the rate limit, per client; basic auth against bcrypt hashes; the extra
//! response headers, on every answer (401, 429 and 503 included).
use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use lru::LruCache;
use parking_lot::Mutex;
use subtle::ConstantTimeEq as _;
use tokio::sync::{OnceCell, Semaphore};

use super::{conns::Client, reply::busy};
use crate::{
    ratelimit::TokenBucket,
    webconfig::{RateLimit, Web},
};

/// Clients whose rate-limit state is kept; past it, the one seen least recently is forgotten
/// (and starts again with a full bucket when it comes back: forgetting never tightens a limit).
pub const RATE_LIMITED_CLIENTS: usize = 4096;
/// bcrypt verifications at once: each takes a blocking thread for 50-250 ms.
const MAX_CONCURRENT_BCRYPT: usize = 2;
/// How long a request waits for its bcrypt turn before a 503 with Retry-After.
pub const BCRYPT_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// Successful (user, password) checks remembered; the least recently used is dropped first.
/// Failures are never cached, so they cannot push a success out.
pub const AUTH_CACHE_SIZE: usize = 256;

/// Wrap `app` in the guard `web` asks for, if any.
pub fn wrap(app: Router, web: Option<&Web>) -> Router {
    match web.map(Guard::new) {
        // Router::layer also covers the fallback: unknown paths need credentials too.
        Some(guard) if guard.is_active() => {
            app.layer(middleware::from_fn_with_state(Arc::new(guard), guarded))
        }
        _ => app,
    }
}

struct Guard {
    headers: Vec<(HeaderName, HeaderValue)>,
    limiter: Option<RateLimiter>,
    auth: Option<BasicAuth>,
}

impl Guard {
    fn new(web: &Web) -> Guard {
        let c = &web.config;
        Guard {
            headers: c.headers.clone(),
            limiter: c
                .rate_limit
                .map(|r| RateLimiter::new(r, RATE_LIMITED_CLIENTS)),
            auth: (!c.users.is_empty()).then(|| BasicAuth::new(&c.users)),
        }
    }

    fn is_active(&self) -> bool {
        !self.headers.is_empty() || self.limiter.is_some() || self.auth.is_some()
    }
}

async fn guarded(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let mut resp = check(&guard, req, next).await;
    for (k, v) in &guard.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

async fn check(guard: &Guard, req: Request, next: Next) -> Response {
    if let Some(limiter) = &guard.limiter {
        // The server puts the client on every request; a request without one shares a bucket.
        let client = req
            .extensions()
            .get::<Client>()
            .copied()
            .unwrap_or(Client::UNKNOWN);
        if !limiter.allow(client, Instant::now()) {
            return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
        }
    }
    if let Some(auth) = &guard.auth {
        let verdict = match basic_credentials(req.headers()) {
            Some((user, pass)) => auth.check(&user, &pass).await,
            None => Verdict::Denied,
        };
        match verdict {
            Verdict::Allowed => {}
            Verdict::Denied => {
                let mut resp = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
                return resp;
            }
            Verdict::Busy => return busy("too many concurrent password checks\n"),
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

// ------------------------------------------------------------------------------ rate limit

/// exporter-toolkit's rate limit, one bucket per client: a client over its rate gets 429
/// without using up anyone else's.
struct RateLimiter {
    rate: RateLimit,
    clients: Mutex<LruCache<Client, TokenBucket>>,
}

impl RateLimiter {
    fn new(rate: RateLimit, clients: usize) -> RateLimiter {
        RateLimiter {
            rate,
            clients: Mutex::new(LruCache::new(
                NonZeroUsize::new(clients).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn allow(&self, client: Client, now: Instant) -> bool {
        self.clients
            .lock()
            .get_or_insert_mut(client, || {
                TokenBucket::every(self.rate.interval, self.rate.burst, now)
            })
            .try_take(now)
            .is_ok()
    }
}

// ------------------------------------------------------------------------------ basic auth

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

/// The outcome of a credential check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Denied,
    /// No bcrypt turn within BCRYPT_QUEUE_TIMEOUT: try again later.
    Busy,
}

/// Basic auth against bcrypt hashes. bcrypt is slow by design, so successes are cached by a
/// SHA-256 of (user, hash, password) (exporter-toolkit caches too): Prometheus' scrapes, with the
/// same credentials each time, cost one bcrypt in all.
struct BasicAuth {
    /// (SHA-256 of the user name, bcrypt hash).
    users: Vec<(Digest, String)>,
    /// Highest cost among the users' hashes: the dummy hash for unknown users uses it, so their
    /// timing matches a known user's.
    max_cost: u32,
    dummy: OnceCell<String>,
    successes: Mutex<LruCache<Digest, ()>>,
    bcrypt: Semaphore,
    queue_timeout: Duration,
}

impl BasicAuth {
    fn new(users: &BTreeMap<String, String>) -> BasicAuth {
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
            successes: Mutex::new(LruCache::new(
                NonZeroUsize::new(AUTH_CACHE_SIZE).unwrap_or(NonZeroUsize::MIN),
            )),
            bcrypt: Semaphore::new(MAX_CONCURRENT_BCRYPT),
            queue_timeout: BCRYPT_QUEUE_TIMEOUT,
        }
    }

    async fn check(&self, user: &str, password: &str) -> Verdict {
        let user_digest = sha256(&[user.as_bytes()]);
        // Look at every entry, so the time taken does not depend on which user matched.
        let mut found: Option<&str> = None;
        for (digest, hash) in &self.users {
            if bool::from(digest.ct_eq(&user_digest)) {
                found = Some(hash);
            }
        }
        let key =
            found.map(|hash| sha256(&[user.as_bytes(), hash.as_bytes(), password.as_bytes()]));
        if key.is_some_and(|k| self.cached(&k)) {
            return Verdict::Allowed;
        }
        let hash = match found {
            Some(h) => h.to_string(),
            // An unknown user still costs one bcrypt, so timing does not reveal valid names.
            None => match self.dummy_hash().await {
                Some(h) => h,
                None => return Verdict::Denied,
            },
        };
        let Ok(Ok(_turn)) = tokio::time::timeout(self.queue_timeout, self.bcrypt.acquire()).await
        else {
            return Verdict::Busy;
        };
        // Another request with the same credentials may have filled the cache meanwhile.
        if key.is_some_and(|k| self.cached(&k)) {
            return Verdict::Allowed;
        }
        let password = password.to_string();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        tracing::debug!(ok, "basic auth: bcrypt verification");
        match key {
            Some(k) if ok => {
                self.successes.lock().put(k, ());
                Verdict::Allowed
            }
            _ => Verdict::Denied,
        }
    }

    fn cached(&self, key: &Digest) -> bool {
        // `get` also marks it as recently used.
        self.successes.lock().get(key).is_some()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::handlers::{router, tests::state};
    use crate::webconfig::WebConfig;
    use axum::body::Body;
    use tower::ServiceExt as _;

    fn web(yaml: &str) -> Web {
        Web {
            config: WebConfig::parse(yaml).unwrap(),
            tls: None,
        }
    }

    /// GET `path` through `app` as `client`: status and the named header.
    async fn get(
        app: &Router,
        path: &str,
        client: Option<Client>,
        auth: Option<&str>,
        header: &str,
    ) -> (u16, String) {
        let mut req = Request::builder().uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let mut req = req.body(Body::empty()).unwrap();
        if let Some(c) = client {
            req.extensions_mut().insert(c);
        }
        let resp = app.clone().oneshot(req).await.unwrap();
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

    fn client(ip: &str) -> Client {
        Client::of(ip.parse().unwrap())
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
            let (status, challenge) = get(&app, path, None, None, "www-authenticate").await;
            assert_eq!((status, challenge.as_str()), (401, "Basic"), "{path}");
            for bad in [
                basic("alice", "nope"),
                basic("carol", "pw"),
                "Basic !!".into(),
            ] {
                let status = get(&app, path, None, Some(&bad), "").await.0;
                assert_eq!(status, 401, "{path} {bad}");
            }
        }
        // Twice: the second answer comes from the cache.
        for _ in 0..2 {
            assert_eq!(get(&app, "/metrics", None, Some(&good), "").await.0, 200);
        }
        assert_eq!(get(&app, "/elsewhere", None, Some(&good), "").await.0, 404);
        let bob = basic("bob", "pw");
        assert_eq!(
            get(&app, "/-/healthy", None, Some(&bob), "x-frame-options").await,
            (200, "deny".to_string())
        );
        assert_eq!(
            get(&app, "/-/healthy", None, None, "x-frame-options")
                .await
                .1,
            "deny",
            "on a 401 too"
        );
    }

    #[tokio::test]
    async fn successes_only_are_cached_and_failures_cannot_evict_them() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = BTreeMap::from([("alice".to_string(), hash)]);
        let auth = BasicAuth::new(&users);
        assert_eq!(auth.check("alice", "pw").await, Verdict::Allowed);
        // More failures than the cache holds (a known user's and an unknown one's): none is
        // remembered.
        for i in 0..AUTH_CACHE_SIZE + 44 {
            let user = if i % 2 == 0 { "alice" } else { "mallory" };
            let verdict = auth.check(user, &format!("wrong {i}")).await;
            assert_eq!(verdict, Verdict::Denied);
        }
        assert_eq!(auth.successes.lock().len(), 1);
        // The success is still there: with no bcrypt turn to be had, it is answered anyway.
        let _all_turns = auth.bcrypt.acquire_many(MAX_CONCURRENT_BCRYPT as u32).await;
        assert_eq!(auth.check("alice", "pw").await, Verdict::Allowed);
    }

    #[tokio::test]
    async fn the_success_cache_drops_the_least_recently_used() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = BTreeMap::from([("alice".to_string(), hash)]);
        let auth = BasicAuth::new(&users);
        let key = |p: &str| sha256(&[b"alice", users["alice"].as_bytes(), p.as_bytes()]);
        // Fill the cache by hand (bcrypt matches one password per hash) ...
        for i in 0..AUTH_CACHE_SIZE {
            auth.successes.lock().put(key(&i.to_string()), ());
        }
        // ... touch the oldest, add one more: the second oldest is the one dropped.
        assert!(auth.cached(&key("0")));
        assert_eq!(auth.check("alice", "pw").await, Verdict::Allowed);
        assert!(auth.cached(&key("0")) && auth.cached(&key("pw")));
        assert!(!auth.cached(&key("1")));
        assert_eq!(auth.successes.lock().len(), AUTH_CACHE_SIZE);
    }

    #[tokio::test]
    async fn a_check_that_waits_too_long_for_bcrypt_is_told_to_retry() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = BTreeMap::from([("alice".to_string(), hash)]);
        let mut auth = BasicAuth::new(&users);
        auth.queue_timeout = Duration::from_millis(50);
        // Every bcrypt turn taken, for good.
        auth.bcrypt = Semaphore::new(0);
        assert_eq!(auth.check("alice", "pw").await, Verdict::Busy);
        assert_eq!(auth.check("nobody", "pw").await, Verdict::Busy);
        // Through the router: 503 with Retry-After.
        let guard = Guard {
            headers: Vec::new(),
            limiter: None,
            auth: Some(auth),
        };
        let app = router("/metrics", state(4), None)
            .layer(middleware::from_fn_with_state(Arc::new(guard), guarded));
        let (status, retry) = get(
            &app,
            "/-/healthy",
            None,
            Some(&basic("alice", "pw")),
            "retry-after",
        )
        .await;
        assert_eq!((status, retry.as_str()), (503, "1"));
    }

    #[tokio::test]
    async fn rate_limit_is_per_client() {
        let w = web("rate_limit:\n  interval: 1h\n  burst: 3\n");
        let app = router("/metrics", state(4), Some(&w));
        let (a, b) = (client("192.0.2.1"), client("192.0.2.2"));
        let mut statuses = Vec::new();
        for c in [a, a, a, a, b, b, a, b, b, b] {
            statuses.push(get(&app, "/-/healthy", Some(c), None, "").await.0);
        }
        assert_eq!(statuses, [200, 200, 200, 429, 200, 200, 429, 200, 429, 429]);
    }

    #[test]
    fn the_rate_limit_table_is_bounded_and_forgets_the_least_recent_client() {
        let rate = RateLimit {
            interval: Duration::from_secs(3600),
            burst: 1,
        };
        let limiter = RateLimiter::new(rate, 2);
        let now = Instant::now();
        let (a, b, c) = (
            client("192.0.2.1"),
            client("192.0.2.2"),
            client("192.0.2.3"),
        );
        assert!(limiter.allow(a, now) && limiter.allow(b, now));
        assert!(!limiter.allow(a, now), "a used its burst");
        // A third client: b, seen least recently, is forgotten; a is kept.
        assert!(limiter.allow(c, now));
        assert_eq!(limiter.clients.lock().len(), 2);
        assert!(!limiter.allow(a, now), "a still limited");
        assert!(limiter.allow(b, now), "b forgotten: a full bucket again");
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
}
