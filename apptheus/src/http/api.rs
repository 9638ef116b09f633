//! `GET /api/containers`: every container, live and retained, as JSON: what `/containers`
//! shows and `apptheus-top` reads. These types are the format (docs/glance.md, "As JSON:
//! `GET /api/containers`"); the page's script and `apptheus-top` read them, nothing else shapes them.
use apptheus_api::{Container, Containers, State, Trend};
use axum::{
    extract,
    http::{HeaderMap, Uri},
    response::Response,
};

use super::{state::AppState, views};
use crate::{
    container::unix_seconds,
    history::{History, Track},
    metrics::ContainerSeries,
};

/// The containers of `series` with what `history` kept of them, at Unix time `now`.
pub fn build(
    series: &[ContainerSeries],
    history: &History,
    with_history: bool,
    now: f64,
) -> Containers {
    build_for(series, history, with_history, now, |_| true, false)
}

/// As `build`, of the containers `shown` keeps only, each ended one with its summary record
/// when `with_summary` (the query socket's answers).
pub fn build_for(
    series: &[ContainerSeries],
    history: &History,
    with_history: bool,
    now: f64,
    shown: impl Fn(&ContainerSeries) -> bool,
    with_summary: bool,
) -> Containers {
    let mut containers: Vec<Container> = history.read(|tracks| {
        series
            .iter()
            .filter(|s| shown(s))
            .map(|s| {
                let track = tracks.get(&s.identity);
                let mut c = container(s, track);
                if with_history {
                    c.history = Some(track.map(|t| trend(t, history)).unwrap_or_default());
                }
                if with_summary && s.end_time.is_some() {
                    c.summary = s.summary.as_deref().cloned().map(Box::new);
                }
                c
            })
            .collect()
    });
    containers.sort_by(|a, b| {
        let cpu = |c: &Container| c.cpu_cores.unwrap_or(-1.0);
        cpu(b).total_cmp(&cpu(a)).then_with(|| a.id.cmp(&b.id))
    });
    Containers {
        time: now,
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        interval_seconds: history.interval().as_secs_f64(),
        step_seconds: history.step().as_secs_f64(),
        points: crate::history::POINTS,
        containers,
    }
}

fn container(s: &ContainerSeries, track: Option<&Track>) -> Container {
    let (identity, stats) = (&s.identity, &s.stats);
    let non_empty = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let live = s.end_time.is_none();
    Container {
        id: identity.id.clone(),
        user: identity.user.clone(),
        uid: identity.uid.clone(),
        scheduler: identity.job.scheduler.map(|s| s.as_str().to_string()),
        job_id: non_empty(&identity.job.id),
        state: if live { State::Live } else { State::Ended },
        start_time: identity.start_time,
        end_time: s.end_time,
        cpu_cores: track
            .and_then(Track::cpu_cores_now)
            .filter(|_| live)
            .map(|c| round3(f64::from(c))),
        cpu_seconds: stats.cpu.and_then(|c| c.usage_seconds),
        memory_bytes: stats.memory.and_then(|m| m.usage_bytes),
        memory_peak_bytes: stats.memory.and_then(|m| m.max_usage_bytes),
        memory_limit_bytes: stats.memory.and_then(|m| m.limit_bytes),
        processes: s.procs.live,
        // As `apptheus_container_exit_code`: the launcher's status, once the container ended
        // (its launcher may exit before its last process does).
        exit_code: s.procs.exit_code.filter(|_| !live),
        history: None,
        summary: None,
    }
}

fn trend(track: &Track, history: &History) -> Trend {
    let known = |v: f32| v.is_finite().then_some(v);
    Trend {
        last: track.last(history.step()),
        cpu_cores: track
            .points()
            .map(|p| known(p.cpu_cores).map(|c| (c * 1000.0).round() / 1000.0))
            .collect(),
        memory_bytes: track
            .points()
            .map(|p| known(p.memory_bytes).map(|m| m as u64))
            .collect(),
    }
}

/// Three decimals: CPU cores, not noise.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Whether the query asks to leave the points out (`?history=0`).
pub(super) fn without_history(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "history=0" || p == "history=false")
    })
}

/// Now, as Unix seconds.
pub(super) fn now() -> f64 {
    unix_seconds(std::time::SystemTime::now())
}

/// `GET /api/containers[?history=0]`.
pub(super) async fn containers(
    extract::State(state): extract::State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let with_history = !without_history(&uri);
    views::answer(&state, &headers, views::JSON, move |state| {
        let snapshot = state.metrics.snapshot();
        let view = build(snapshot.series(), &state.history, with_history, now());
        // Plain data: serializing it cannot fail.
        serde_json::to_vec(&view).unwrap_or_default()
    })
    .await
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::{
        cgroup::{Cpu, Memory, Stats},
        container::Identity,
        history::Reading,
        tracker::ProcessCounters,
    };

    pub fn series(id: &str, job: &str, end_time: Option<f64>) -> ContainerSeries {
        let mut identity = Identity::pending(id.into(), "1000".into());
        identity.user = "alice".into();
        identity.start_time = 100.0;
        if !job.is_empty() {
            identity.job.scheduler = Some(crate::job::Scheduler::Slurm);
            identity.job.id = job.into();
        }
        ContainerSeries {
            identity: Arc::new(identity),
            memory_source: "cgroup",
            memory_peak_source: apptheus_api::PeakSource::Kernel,
            cpus_allowed: None,
            end_time,
            stats: std::sync::Arc::new(Stats {
                cpu: Some(Cpu {
                    usage_seconds: Some(12.5),
                    ..Cpu::default()
                }),
                memory: Some(Memory {
                    usage_bytes: Some(4096),
                    max_usage_bytes: Some(8192),
                    ..Memory::default()
                }),
                ..Stats::default()
            }),
            procs: ProcessCounters {
                live: 3,
                ..Default::default()
            },
            summary: None,
        }
    }

    /// `history` with `cores` of CPU for `id` over 3 s, closing two points (1 s steps).
    fn busy(history: &History, key: u64, s: &ContainerSeries, cores: f64) {
        let t0 = Instant::now();
        for i in 0..=3u32 {
            let secs = f64::from(i);
            let reading = Reading {
                at: t0 + Duration::from_secs_f64(secs),
                unix: 1000.0 + secs,
                cpu_seconds: Some(secs * cores),
                memory_bytes: Some(4096),
            };
            history.record(key, &s.identity, &reading);
        }
    }

    #[test]
    fn rows_sorted_by_cpu_with_their_points() {
        let history = History::new(Duration::from_millis(100));
        let (a, b, ended) = (
            series("a_1", "", None),
            series("b_2", "42", None),
            series("c_3", "", Some(200.0)),
        );
        busy(&history, 1, &a, 0.5);
        busy(&history, 2, &b, 1.25);
        busy(&history, 3, &ended, 2.0);
        let view = build(&[a, b, ended], &history, true, 300.0);
        let ids: Vec<&str> = view.containers.iter().map(|c| c.id.as_str()).collect();
        // An ended container has no CPU now: last.
        assert_eq!(ids, ["b_2", "a_1", "c_3"]);
        let b = &view.containers[0];
        assert_eq!(b.cpu_cores, Some(1.25));
        assert_eq!(
            (b.scheduler.as_deref(), b.job_id.as_deref()),
            (Some("slurm"), Some("42"))
        );
        let trend = b.history.as_ref().unwrap();
        assert_eq!(trend.cpu_cores, [Some(1.25); 3]);
        assert_eq!(trend.memory_bytes, [Some(4096); 3]);
        assert_eq!(trend.last, Some(1003.0));
        assert_eq!(view.containers[2].state, State::Ended);
        assert_eq!(view.containers[2].cpu_cores, None);
        assert_eq!((view.step_seconds, view.points), (1.0, 120));
        // Without the points.
        let bare = build(&[series("a_1", "", None)], &history, false, 300.0);
        assert_eq!(bare.containers[0].history, None);
    }

    #[test]
    fn the_format_as_documented() {
        let history = History::new(Duration::from_millis(500));
        let view = build(&[series("x_7", "", None)], &history, true, 300.0);
        let json: serde_json::Value = serde_json::to_value(&view).unwrap();
        let c = &json["containers"][0];
        for (key, value) in [
            ("id", serde_json::json!("x_7")),
            ("user", serde_json::json!("alice")),
            ("uid", serde_json::json!("1000")),
            ("scheduler", serde_json::Value::Null),
            ("job_id", serde_json::Value::Null),
            ("state", serde_json::json!("live")),
            ("start_time", serde_json::json!(100.0)),
            ("end_time", serde_json::Value::Null),
            ("cpu_cores", serde_json::Value::Null),
            ("cpu_seconds", serde_json::json!(12.5)),
            ("memory_bytes", serde_json::json!(4096)),
            ("memory_peak_bytes", serde_json::json!(8192)),
            ("memory_limit_bytes", serde_json::Value::Null),
            ("processes", serde_json::json!(3)),
            ("exit_code", serde_json::Value::Null),
            (
                "history",
                serde_json::json!({"last": null, "cpu_cores": [], "memory_bytes": []}),
            ),
        ] {
            assert_eq!(c[key], value, "{key}");
        }
        assert_eq!(c.as_object().unwrap().len(), 16, "no field undocumented");
        assert_eq!(json["interval_seconds"], 0.5);
        assert_eq!(json["step_seconds"], 5.0);
        // And back: apptheus-top reads what the daemon writes.
        let back: Containers = serde_json::from_value(json).unwrap();
        assert_eq!(back, view);
    }

    /// A container's JSON carries the table's values under the keys the table names (see
    /// `metrics::families`), null where the table has no value.
    #[test]
    fn the_containers_hold_the_tables_values() {
        use crate::metrics::families::tests::{differences, every_value, no_value};
        for (what, series) in [("every value", every_value()), ("no value", no_value())] {
            let json = serde_json::to_value(container(&series, None)).unwrap();
            let wrong = differences(&json, &series, |f| f.api, |f| f.api);
            assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
        }
    }

    #[test]
    fn the_exit_code_is_the_trackers_once_ended() {
        let history = History::new(Duration::from_millis(500));
        let (mut live, mut ended) = (series("l_1", "", None), series("e_2", "", Some(200.0)));
        // The launcher exited (137: SIGKILL) while its children live on: no exit code yet.
        live.procs.exit_code = Some(137);
        ended.procs.exit_code = Some(3);
        let view = build(&[live, ended], &history, false, 300.0);
        let code = |id: &str| {
            let c = view.containers.iter().find(|c| c.id == id).unwrap();
            c.exit_code
        };
        assert_eq!((code("l_1"), code("e_2")), (None, Some(3)));
    }

    #[test]
    fn history_can_be_left_out() {
        let uri = |q: &str| q.parse::<Uri>().unwrap();
        assert!(without_history(&uri("/api/containers?history=0")));
        assert!(without_history(&uri("/api/containers?a=1&history=false")));
        assert!(!without_history(&uri("/api/containers")));
        assert!(!without_history(&uri("/api/containers?history=1")));
    }
}
