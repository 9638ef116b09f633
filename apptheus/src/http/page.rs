//! `GET /` (what this server is, with links) and `GET /containers` (the node at a glance: one
//! table of the containers, sortable, refreshing itself every 2 s from `/api/containers`, with
//! small SVG charts of each one's last minutes).
//!
//! Nodes are often offline: the page is one response, its style and script inline, nothing
//! fetched from elsewhere. Job ids and other values come from users' environments, so every
//! value is escaped here (maud escapes whatever is not marked `PreEscaped`: only our own style
//! and script are), the script sets text with `textContent` only, and a Content-Security-Policy
//! allows our own inline style and script by their hashes and nothing else: an injected
//! `<script>` would not run even if some escaping were missed.
use std::sync::LazyLock;

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse as _, Response},
};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{
    api::{self, Container, Containers, State as Liveness},
    format::{self, NONE},
    state::AppState,
    views,
};
use crate::history::POINTS;

const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// A chart is one pixel per point across, this high.
const CHART_HEIGHT: f64 = 24.0;

/// Our inline style and script, by their hashes; nothing else, from nowhere else.
static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE)
    )
});

/// A CSP source for an inline element whose text is `text`.
fn csp_hash(text: &str) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The page's security headers on `resp`.
fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The table's columns: sort key (`None`: not sortable), heading, whether it holds numbers.
const COLUMNS: [(Option<&str>, &str, bool); 14] = [
    (Some("id"), "Container", false),
    (Some("user"), "User", false),
    (Some("job"), "Job", false),
    (Some("state"), "State", false),
    (Some("age"), "Age", true),
    (Some("cpu"), "CPU", true),
    (Some("cputime"), "CPU time", true),
    (Some("mem"), "Memory", true),
    (Some("peak"), "Peak", true),
    (Some("limit"), "Limit", true),
    (Some("procs"), "Procs", true),
    (Some("exit"), "Exit", true),
    (None, "CPU history", false),
    (None, "Memory history", false),
];

/// `GET /`.
pub(super) fn index(telemetry_path: &str) -> Response {
    let page = index_page(telemetry_path).into_string();
    secured(([(header::CONTENT_TYPE, views::HTML)], page).into_response())
}

fn index_page(telemetry_path: &str) -> Markup {
    let links = [
        (telemetry_path, "Metrics", "for Prometheus"),
        ("/containers", "Containers", "this node at a glance"),
        (
            "/api/containers",
            "Containers as JSON",
            "what the page and apptheus-top read",
        ),
        ("/-/healthy", "Health", "200 while the daemon runs"),
        ("/-/ready", "Readiness", "200 once it monitors"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "apptheus" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "apptheus" }
                p { "Per-container telemetry for HPC and batch hosts, version "
                    (env!("CARGO_PKG_VERSION")) " (" (env!("APPTHEUS_REVISION")) ")." }
                ul {
                    @for (path, name, what) in links {
                        li { a href=(path) { (name) } " — " (what) " (" code { (path) } ")" }
                    }
                }
            }
        }
    }
}

/// `GET /containers`.
pub(super) async fn containers(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let resp = views::answer(&state, &headers, views::HTML, |state| {
        let snapshot = state.metrics.snapshot();
        let view = api::build(snapshot.series(), &state.history, true, api::now());
        page(&view).into_string().into_bytes()
    })
    .await;
    secured(resp)
}

/// The whole page for `view`.
fn page(view: &Containers) -> Markup {
    let live = view
        .containers
        .iter()
        .filter(|c| c.state == Liveness::Live)
        .count();
    let ended = view.containers.len() - live;
    let updated =
        crate::container::from_unix_seconds(view.time).map(humantime::format_rfc3339_seconds);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "apptheus: " (view.host) }
                style { (PreEscaped(STYLE)) }
            }
            body data-refreshes="0" {
                header {
                    h1 { "apptheus " span #host { (view.host) } }
                    p #status {
                        (live) " live, " (ended) " ended"
                        @if let Some(t) = updated { " · as of " (t.to_string()) }
                    }
                }
                table #containers {
                    thead {
                        tr {
                            @for (key, label, numeric) in COLUMNS {
                                th data-key=[key] class=[numeric.then_some("n")]
                                    aria-sort=[(key == Some("cpu")).then_some("descending")] {
                                    (label)
                                }
                            }
                        }
                    }
                    tbody {
                        @for c in &view.containers { (row(c, view)) }
                    }
                }
                p.note {
                    "CPU in cores over the last second; charts: the last "
                    (format::duration(view.step_seconds * POINTS as f64))
                    ", a point every " (format::duration(view.step_seconds))
                    ". Click a heading to sort."
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// One container's row; `page.js` builds the same cells from the JSON.
fn row(c: &Container, view: &Containers) -> Markup {
    let bytes = |b: Option<u64>| b.map_or_else(|| NONE.to_string(), format::bytes);
    let (state, class) = match c.state {
        Liveness::Live => ("live", "live"),
        Liveness::Ended => ("ended", "ended"),
    };
    html! {
        tr data-id=(c.id) {
            td.id { (c.id) }
            td { (c.user) }
            td title=[c.scheduler.as_deref()] { (c.job_id.as_deref().unwrap_or(NONE)) }
            td class=(class) { (state) }
            td.n { (format::duration(view.time - c.start_time)) }
            td.n { (c.cpu_cores.map_or_else(|| NONE.to_string(), format::cores)) }
            td.n { (c.cpu_seconds.map_or_else(|| NONE.to_string(), format::cpu_time)) }
            td.n { (bytes(c.memory_bytes)) }
            td.n { (bytes(c.memory_peak_bytes)) }
            td.n { (bytes(c.memory_limit_bytes)) }
            td.n { (c.processes) }
            td.n { (c.exit_code.map_or_else(|| NONE.to_string(), |e| e.to_string())) }
            td.chart { (cpu_chart(c, view)) }
            td.chart { (memory_chart(c, view)) }
        }
    }
}

fn cpu_chart(c: &Container, view: &Containers) -> Markup {
    let trend = c.history.as_ref();
    let values: Vec<Option<f64>> = trend
        .map(|t| t.cpu_cores.iter().map(|v| v.map(f64::from)).collect())
        .unwrap_or_default();
    let max = values.iter().flatten().copied().fold(0.0, f64::max);
    let label = format!(
        "CPU, the last {}: up to {} cores",
        format::duration(view.step_seconds * POINTS as f64),
        format::cores(max)
    );
    let top = max.ceil().max(1.0);
    chart(
        "cpu",
        &values,
        trend.and_then(|t| t.last),
        top,
        &label,
        view,
    )
}

fn memory_chart(c: &Container, view: &Containers) -> Markup {
    let trend = c.history.as_ref();
    let values: Vec<Option<f64>> = trend
        .map(|t| t.memory_bytes.iter().map(|v| v.map(|m| m as f64)).collect())
        .unwrap_or_default();
    let max = values.iter().flatten().copied().fold(0.0, f64::max);
    let label = format!(
        "Memory, the last {}: up to {}",
        format::duration(view.step_seconds * POINTS as f64),
        format::bytes(max as u64)
    );
    // Headroom above the highest point: memory often stands still, and a line along the top
    // edge reads as "full".
    let top = (max * 1.2).max(1024.0 * 1024.0);
    chart(
        "mem",
        &values,
        trend.and_then(|t| t.last),
        top,
        &label,
        view,
    )
}

/// A chart of `values` (the newest closed at `last`), scaled to `top`: one pixel per step,
/// the right edge now, a gap where a value is unknown.
fn chart(
    class: &str,
    values: &[Option<f64>],
    last: Option<f64>,
    top: f64,
    label: &str,
    view: &Containers,
) -> Markup {
    let lines = last.map(|last| polylines(values, last, top, view));
    html! {
        svg class={ "chart " (class) } width=(POINTS) height=(CHART_HEIGHT)
            viewBox={ "0 0 " (POINTS) " " (CHART_HEIGHT) } role="img" aria-label=(label) {
            title { (label) }
            @for points in lines.unwrap_or_default() {
                polyline points=(points) {}
            }
        }
    }
}

/// The `points` attributes of the lines through `values`, split where a value is unknown.
fn polylines(values: &[Option<f64>], last: f64, top: f64, view: &Containers) -> Vec<String> {
    // Steps since the newest point closed: an ended container's line moves left as time goes.
    let offset = ((view.time - last) / view.step_seconds).floor().max(0.0) as i64;
    let n = values.len() as i64;
    let mut lines = Vec::new();
    let mut line: Vec<String> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let x = POINTS as i64 - 1 - offset - (n - 1 - i as i64);
        match v {
            Some(v) if x >= 0 => {
                let y = (CHART_HEIGHT - 1.0) - v / top * (CHART_HEIGHT - 2.0);
                line.push(format!("{x},{y:.1}"));
            }
            _ => {
                if !line.is_empty() {
                    lines.push(line.join(" "));
                    line.clear();
                }
            }
        }
    }
    if !line.is_empty() {
        lines.push(line.join(" "));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::api::{State as Liveness, Trend};

    fn view(containers: Vec<Container>) -> Containers {
        Containers {
            time: 1000.0,
            host: "node<1>".into(),
            version: "0".into(),
            interval_seconds: 0.5,
            step_seconds: 5.0,
            points: POINTS,
            containers,
        }
    }

    fn container(id: &str, job: &str) -> Container {
        Container {
            id: id.into(),
            user: "alice".into(),
            uid: "1000".into(),
            scheduler: Some("slurm".into()),
            job_id: Some(job.into()),
            state: Liveness::Live,
            start_time: 900.0,
            end_time: None,
            cpu_cores: Some(1.5),
            cpu_seconds: Some(30.0),
            memory_bytes: Some(1 << 20),
            memory_peak_bytes: Some(2 << 20),
            memory_limit_bytes: None,
            processes: 2,
            exit_code: None,
            history: Some(Trend {
                last: Some(1000.0),
                cpu_cores: vec![Some(1.0), Some(2.0), None, Some(0.0)],
                memory_bytes: vec![Some(1 << 20); 4],
            }),
            summary: None,
        }
    }

    #[test]
    fn every_value_is_escaped() {
        let evil = "<script>alert(1)</script>";
        let mut c = container(evil, evil);
        c.user = "\"><img src=x onerror=alert(2)>".into();
        c.scheduler = Some("'onmouseover='alert(3)".into());
        let html = page(&view(vec![c])).into_string();
        assert!(!html.contains(evil), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // Inside double quotes, a single quote ends nothing.
        assert!(html.contains("title=\"'onmouseover='alert(3)\""), "{html}");
        assert!(html.contains("node&lt;1&gt;"));
        // Our own script is the only one.
        assert_eq!(html.matches("<script>").count(), 1);
    }

    #[test]
    fn the_csp_hashes_are_those_of_the_inline_style_and_script() {
        let html = page(&view(vec![container("a_1", "1")])).into_string();
        let inline = |tag: &str| {
            let open = format!("<{tag}>");
            let start = html.find(&open).unwrap() + open.len();
            let end = start + html[start..].find(&format!("</{tag}>")).unwrap();
            html[start..end].to_string()
        };
        assert!(CSP.contains(&format!("script-src '{}'", csp_hash(&inline("script")))));
        assert!(CSP.contains(&format!("style-src '{}'", csp_hash(&inline("style")))));
        assert!(CSP.starts_with("default-src 'none';"));
        assert!(!CSP.contains("unsafe"));
    }

    #[test]
    fn charts_end_now_and_break_at_unknown_values() {
        let v = view(vec![]);
        let values = [Some(1.0), Some(2.0), None, Some(0.0)];
        // Newest point now: at the right edge; a gap at the unknown value.
        let lines = polylines(&values, 1000.0, 2.0, &v);
        assert_eq!(lines, ["116,12.0 117,1.0", "119,23.0"]);
        // Closed 12 s ago (two steps): two pixels to the left.
        let lines = polylines(&values, 988.0, 2.0, &v);
        assert_eq!(lines, ["114,12.0 115,1.0", "117,23.0"]);
        // Far in the past: nothing left to draw.
        assert!(polylines(&values, 0.0, 2.0, &v).is_empty());
        let html = page(&view(vec![container("a_1", "1")])).into_string();
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(
            html.contains("<polyline points=\"116,12.0 117,1.0\">"),
            "{html}"
        );
        assert!(html.contains("<polyline points=\"116,4.7 117,4.7 118,4.7 119,4.7\">"));
    }

    #[test]
    fn the_index_links_the_configured_metrics_path() {
        let html = index_page("/custom/metrics").into_string();
        for path in [
            "/custom/metrics",
            "/containers",
            "/api/containers",
            "/-/healthy",
            "/-/ready",
        ] {
            assert!(
                html.contains(&format!("<a href=\"{path}\">")),
                "{path}: {html}"
            );
        }
        let resp = index("/custom/metrics");
        assert!(
            resp.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
    }
}
