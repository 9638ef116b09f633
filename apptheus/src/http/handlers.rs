//! The routes: the metrics endpoint, /-/healthy, /-/ready, the page (`/`, `/containers`) and
//! its JSON (`/api/containers`), and 404 for everything else.
use std::sync::atomic::Ordering;

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;

use super::{
    api, guard, page,
    reply::{accepts_gzip, busy},
    state::{AppState, SCRAPE_QUEUE_TIMEOUT},
};
use crate::{metrics::gzip_response, webconfig::Web};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes, wrapped in the web configuration's guard when there is one.
pub fn router(telemetry_path: &str, state: AppState, web: Option<&Web>) -> Router {
    let mut app = Router::new()
        .route(telemetry_path, get(metrics))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready));
    // The page's paths, where the metrics are not: a --web.telemetry-path of `/` (valid
    // before the page existed) keeps the metrics there.
    let path = telemetry_path.to_string();
    let pages = [
        ("/", get(move || std::future::ready(page::index(&path)))),
        ("/containers", get(page::containers)),
        ("/api/containers", get(api::containers)),
    ];
    for (p, route) in pages {
        if p != telemetry_path {
            app = app.route(p, route);
        }
    }
    let app = app
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .with_state(state);
    guard::wrap(app, web)
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "Ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Not ready: starting\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // A scrape storm queues here, briefly, instead of piling up blocking encodes.
    let permit =
        tokio::time::timeout(SCRAPE_QUEUE_TIMEOUT, state.scrapes.clone().acquire_owned()).await;
    let Ok(Ok(permit)) = permit else {
        return busy("too many concurrent scrapes\n");
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
pub(super) mod tests {
    use std::sync::{Arc, atomic::AtomicBool};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::metrics::Metrics;
    use axum::extract::Request;
    use tower::ServiceExt as _;

    pub fn state(scrape_permits: usize) -> AppState {
        AppState {
            scrapes: Arc::new(Semaphore::new(scrape_permits)),
            ..AppState::new(
                Arc::new(Metrics::new().unwrap()),
                Arc::new(AtomicBool::new(true)),
            )
        }
    }

    /// GET `path` through `app`: status and the named header.
    pub async fn get(app: &Router, path: &str, header: &str) -> (u16, String) {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let value = resp
            .headers()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (resp.status().as_u16(), value)
    }

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        m
    }

    #[tokio::test]
    async fn routes() {
        let app = router("/metrics", state(4), None);
        assert_eq!(get(&app, "/-/healthy", "").await.0, 200);
        assert_eq!(get(&app, "/-/ready", "").await.0, 200);
        assert_eq!(get(&app, "/elsewhere", "").await.0, 404);
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/containers", "text/html; charset=utf-8"),
            ("/api/containers", "application/json"),
            ("/api/containers?history=0", "application/json"),
        ] {
            let got = get(&app, path, "content-type").await;
            assert_eq!(got, (200, content_type.to_string()), "{path}");
        }
        // A metrics path where a page would be: the metrics win.
        let at_root = router("/", state(4), None);
        assert_eq!(
            get(&at_root, "/", "content-type").await,
            (200, CONTENT_TYPE.to_string())
        );
        assert_eq!(get(&at_root, "/containers", "").await.0, 200);
        let at_page = router("/containers", state(4), None);
        let got = get(&at_page, "/containers", "content-type").await;
        assert_eq!(got, (200, CONTENT_TYPE.to_string()));
        let (status, content_type) = get(&app, "/metrics", "content-type").await;
        assert_eq!((status, content_type.as_str()), (200, CONTENT_TYPE));
        let starting = state(4);
        starting.ready.store(false, Ordering::Release);
        let app = router("/metrics", starting, None);
        assert_eq!(get(&app, "/-/ready", "").await.0, 503);
    }

    #[tokio::test]
    async fn scrapes_over_the_bound_get_503_with_retry_after() {
        // No free slot: the scrape waits SCRAPE_QUEUE_TIMEOUT, then gives up.
        let app = router("/metrics", state(0), None);
        let (status, retry) = get(&app, "/metrics", "retry-after").await;
        assert_eq!((status, retry.as_str()), (503, "1"));
        // Health checks are not scrapes: unaffected.
        assert_eq!(get(&app, "/-/healthy", "").await.0, 200);
        // One slot, used in turn: every scrape is served and gives its slot back.
        let app = router("/metrics", state(1), None);
        for _ in 0..3 {
            assert_eq!(get(&app, "/metrics", "").await.0, 200);
        }
    }

    #[tokio::test]
    async fn views_over_the_bound_get_503_with_retry_after() {
        // No free turn: the page and its JSON wait SCRAPE_QUEUE_TIMEOUT, then give up ...
        let mut full = state(4);
        full.views = Arc::new(Semaphore::new(0));
        let app = router("/metrics", full, None);
        for path in ["/containers", "/api/containers"] {
            let (status, retry) = get(&app, path, "retry-after").await;
            assert_eq!((status, retry.as_str()), (503, "1"), "{path}");
        }
        // ... while the scrapes, with turns of their own, are served.
        assert_eq!(get(&app, "/metrics", "").await.0, 200);
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
