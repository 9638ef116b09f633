//! The HTTP server: the metrics endpoint, /-/healthy and /-/ready, and the node at a glance (`/`,
//! `/containers`, `/api/containers`).
//!
//! Its own accept loop (rather than `axum::serve`) controls each connection: a cap on open
//! connections, per client and in all, making room by closing idle ones (`conns`); TLS, with a
//! handshake timeout; hyper's header read timeout (slow or half-open clients are cut); graceful
//! shutdown. The routes are in `handlers`, the `--web.config.file` guard (rate limit, response
//! headers, basic auth) that wraps them in `guard`; the page in `page` (its style and script
//! beside it), its JSON in `api`, both built by `views`; `format` spells the units. What they
//! all share (the router's state, the 503 and gzip answers) is in `state` and `reply`, which
//! import none of them.
pub mod api;
mod conns;
mod guard;
mod handlers;
mod page;
mod reply;
mod state;
mod views;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use axum::{Router, body::Body};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

use crate::{accept::Acceptor, webconfig::Web};
use conns::{Busy, Client, Conn, Connections};

pub use self::{
    handlers::router,
    state::{AppState, MAX_CONCURRENT_SCRAPES, MAX_CONCURRENT_VIEWS, SCRAPE_QUEUE_TIMEOUT},
};
pub use conns::{MAX_CONNECTIONS_PER_CLIENT, NEW_CONNECTION_GRACE};
pub use guard::{AUTH_CACHE_SIZE, BCRYPT_QUEUE_TIMEOUT, RATE_LIMITED_CLIENTS};

/// A client must send a request's whole header within this time, also on an idle keep-alive
/// connection (hyper starts the timer when it waits for a request head).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake must finish within this time.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most. When full, the connection idle longest is closed for a new one;
/// when none is idle, new ones wait in the kernel's listen backlog.
pub const MAX_CONNECTIONS: usize = 512;
/// At shutdown, how long in-flight requests get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Listen on `--web.listen-address` (port 0: any free port; the log says which).
pub async fn bind(address: &crate::cli::ListenAddress) -> Result<TcpListener> {
    let addrs = address
        .to_socket_addrs()
        .with_context(|| format!("resolving --web.listen-address {address}"))?;
    TcpListener::bind(&addrs[..])
        .await
        .with_context(|| format!("listening on --web.listen-address {address}"))
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
        let test_timeout = crate::testhook::http_timeout();
        ServeOptions {
            tls: web.and_then(|w| w.tls.clone()).map(TlsAcceptor::from),
            header_read_timeout: test_timeout.unwrap_or(HEADER_READ_TIMEOUT),
            handshake_timeout: test_timeout.unwrap_or(TLS_HANDSHAKE_TIMEOUT),
        }
    }
}

/// Serve until `shutdown` is cancelled, then give in-flight requests SHUTDOWN_GRACE to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> Result<()> {
    let acceptor = Acceptor::new(
        listener,
        MAX_CONNECTIONS,
        shutdown.clone(),
        "an HTTP connection",
    );
    let open = Connections::new(MAX_CONNECTIONS_PER_CLIENT, NEW_CONNECTION_GRACE);
    let tasks = TaskTracker::new();
    // Accept first, then decide: a client at its cap must not make room at others' expense.
    while let Some((stream, peer)) = acceptor.accept().await {
        let client = Client::of(peer.ip());
        if !open.room_for(client) {
            tracing::debug!(
                client = %client,
                "HTTP client at its connection limit, all serving: connection closed"
            );
            continue;
        }
        let Some(slot) = acceptor.slot(&*open).await else {
            break;
        };
        let conn = Arc::new(open.open(client, shutdown.child_token()));
        let (app, opts) = (app.clone(), opts.clone());
        tasks.spawn(async move {
            connection(stream, app, &opts, conn).await;
            drop(slot);
        });
    }
    tasks.close();
    // Each connection stops within SHUTDOWN_GRACE of the cancellation; this is a backstop.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, tasks.wait()).await;
    Ok(())
}

/// Serve one accepted connection, over TLS when configured.
async fn connection(stream: TcpStream, app: Router, opts: &ServeOptions, conn: Arc<Conn>) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = &opts.tls else {
        return http1(stream, app, opts, conn).await;
    };
    let handshake = async {
        if looks_like_plain_http(&stream).await {
            refuse_plain_http(stream).await;
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
        // Shutdown, or room needed: a handshake is no request yet, nothing is lost.
        _ = conn.close_token().cancelled() => return,
        r = tokio::time::timeout(opts.handshake_timeout, handshake) => match r {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        },
    };
    http1(tls, app, opts, conn).await
}

/// Whether the first bytes are an HTTP request line rather than a TLS record (which starts with
/// 0x16 for a handshake).
async fn looks_like_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Go's TLS server answers plain HTTP the same way: a clear error instead of garbage.
async fn refuse_plain_http(mut stream: TcpStream) {
    let _ = stream
        .write_all(
            b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
              Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
        )
        .await;
    let _ = stream.shutdown().await;
    // Read what the client sent before closing: closing with unread data would send a reset,
    // which can destroy the answer before the client reads it.
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
}

async fn http1<I>(io: I, app: Router, opts: &ServeOptions, conn: Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            // Serving from now until the response is sent: not to be closed for room.
            let busy = conn.busy();
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(conn.client());
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await?;
                Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
            }
        })
    };
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(http);
    let res = tokio::select! {
        r = http.as_mut() => r,
        _ = conn.close_token().cancelled() => {
            // Idle (between requests, or before the first): close now, nothing is lost.
            if !conn.is_busy() {
                return;
            }
            // Finish the request in flight, then close.
            http.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, http.as_mut()).await {
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

/// A response body that keeps its connection marked as serving until hyper is done with it
/// (sent, or the connection gone): only then is the connection idle.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/http.md (HTTP: TLS and basic auth) and docs/security.md state these numbers: a
    /// change here must be a change there too.
    #[test]
    fn the_documented_limits() {
        assert_eq!(MAX_CONNECTIONS, 512);
        assert_eq!(MAX_CONNECTIONS_PER_CLIENT, 64);
        assert_eq!(NEW_CONNECTION_GRACE, Duration::from_secs(2));
        assert_eq!(HEADER_READ_TIMEOUT, Duration::from_secs(10));
        assert_eq!(TLS_HANDSHAKE_TIMEOUT, Duration::from_secs(10));
        assert_eq!(MAX_CONCURRENT_SCRAPES, 4);
        assert_eq!(SCRAPE_QUEUE_TIMEOUT, Duration::from_secs(2));
        assert_eq!(MAX_CONCURRENT_VIEWS, 2);
        assert_eq!(crate::history::POINTS, 120);
        assert_eq!(crate::history::PASSES_PER_POINT, 10);
        assert_eq!(BCRYPT_QUEUE_TIMEOUT, Duration::from_secs(2));
        assert_eq!(AUTH_CACHE_SIZE, 256);
        assert_eq!(RATE_LIMITED_CLIENTS, 4096);
    }
}
