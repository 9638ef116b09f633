//! Answers built from the containers' snapshot and history (the page and its JSON): built off
//! the async workers, a few at a time, gzipped when the client takes it. At 1,000 containers a
//! view is a few megabytes of text and milliseconds of CPU; a browser left open refreshes it
//! every 2 s, so a room of them must queue, not pile up. Once sent, the allocator is told to
//! give its free memory back (see `Released`).
use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::{
    reply::{accepts_gzip, busy},
    state::{AppState, SCRAPE_QUEUE_TIMEOUT},
};
use crate::metrics::gzip;

pub const JSON: &str = "application/json";
pub const HTML: &str = "text/html; charset=utf-8";

/// Build a view with `build` on a blocking thread, when one of MAX_CONCURRENT_VIEWS turns is
/// free within SCRAPE_QUEUE_TIMEOUT (else 503 with Retry-After); gzip it if `headers` accept it.
pub async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    content_type: &'static str,
    build: impl FnOnce(&AppState) -> Vec<u8> + Send + 'static,
) -> Response {
    let turn =
        tokio::time::timeout(SCRAPE_QUEUE_TIMEOUT, state.views.clone().acquire_owned()).await;
    let Ok(Ok(turn)) = turn else {
        return busy("too many views being built\n");
    };
    let gz = accepts_gzip(headers);
    let state = state.clone();
    let body = tokio::task::spawn_blocking(move || {
        // Held by the work itself: a client that goes away does not free the turn early.
        let _turn = turn;
        let body = build(&state);
        if gz {
            (gzip(&body), true)
        } else {
            (body, false)
        }
    })
    .await;
    let Ok((body, gzipped)) = body else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the view failed\n",
        )
            .into_response();
    };
    let mut resp = Response::new(Body::new(Released {
        data: Some(Bytes::from(body)),
    }));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Live data: never from a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// A view's body. The view was built on a blocking thread, in megabytes of buffers that glibc
/// keeps in that thread's arena once freed (its mmap threshold grows with each large free):
/// measured at 1,000 containers, a few page loads left the daemon 10 MiB larger for good. When
/// the body is gone (sent, or the client gone), the allocator gives its free pages back.
struct Released {
    data: Option<Bytes>,
}

impl http_body::Body for Released {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        self.data = None;
        crate::memory::release_freed();
    }
}
