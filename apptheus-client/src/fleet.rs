//! A job's containers on every node, from the fleet's central store: any Prometheus-compatible
//! HTTP API (`/api/v1/query`) that holds what the nodes' agents remote-write
//! (deploy/prometheus/central.yml), so a job that ran on many nodes gets one report, and one
//! jobstats record with a part per node.
//!
//! The job's containers are the `apptheus_container_job_info` series with its id over the
//! look-back window; each container's figures are its series' extremes over that window (a
//! counter's last value is its largest: the soak shows no container counter ever decreasing).
//! Nodes are named by the `node` label the agents add, else by `instance` without its port.
use std::{collections::BTreeMap, time::Duration};

use apptheus_api::{CpusSource, State};
use serde::Deserialize;

use crate::report::Figures;

/// A query that takes longer than this has failed: the epilog that calls this must end.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Containers asked about in one query, at most (the regex of their ids stays short).
const BATCH: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the store at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: not a Prometheus API answer: {reason}")]
    Format { url: String, reason: String },
}

/// The central store and the cluster label that selects this cluster's series, if any.
pub struct Store {
    agent: ureq::Agent,
    base: String,
    cluster: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// A container of the job: the node it ran on and its id.
type Member = (String, String);

impl Store {
    pub fn new(url: &str, cluster: Option<&str>) -> Store {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Store {
            agent,
            base: url.trim_end_matches('/').to_string(),
            cluster: cluster.map(str::to_string),
        }
    }

    /// An instant query at `at` (unix seconds).
    fn query(&self, expr: &str, at: f64) -> Result<Vec<Sample>, Error> {
        let url = format!("{}/api/v1/query", self.base);
        let req = self
            .agent
            .get(&url)
            .query("query", expr)
            .query("time", format!("{at:.3}"));
        let (status, body) = crate::http::call(req, crate::http::BODY_LIMIT).map_err(|reason| {
            Error::Unreachable {
                url: url.clone(),
                reason,
            }
        })?;
        let answer: Result<Answer, _> = serde_json::from_slice(&body);
        match (status, answer) {
            (200, Ok(Answer { data: Some(d), .. })) => Ok(d.result),
            (
                _,
                Ok(Answer {
                    status: s,
                    error: Some(e),
                    ..
                }),
            ) if s == "error" => Err(Error::Status {
                url,
                status,
                body: e,
            }),
            (200, Err(e)) => Err(Error::Format {
                url,
                reason: e.to_string(),
            }),
            _ => Err(Error::Status {
                url,
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            }),
        }
    }

    fn cluster_matcher(&self) -> String {
        self.cluster
            .as_deref()
            .map(|c| format!(",cluster=\"{}\"", escape(c)))
            .unwrap_or_default()
    }

    /// Job `job_id`'s containers on every node, as they stood at `at`, looking back `window`.
    pub fn job(
        &self,
        job_id: &str,
        window: Duration,
        at: f64,
    ) -> Result<BTreeMap<String, Vec<Figures>>, Error> {
        let w = format!("{}s", window.as_secs().max(1));
        let cluster = self.cluster_matcher();
        let info = self.query(
            &format!(
                "last_over_time(apptheus_container_job_info{{job_id=\"{}\"{cluster}}}[{w}])",
                escape(job_id)
            ),
            at,
        )?;
        let mut members: BTreeMap<Member, (String, Option<String>)> = BTreeMap::new();
        for s in &info {
            let (Some(node), Some(id)) = (node_of(&s.metric), s.metric.get("container")) else {
                continue;
            };
            let user = s.metric.get("user").cloned().unwrap_or_default();
            let scheduler = s.metric.get("scheduler").cloned();
            members.insert((node, id.clone()), (user, scheduler));
        }
        let ids: Vec<&String> = members.keys().map(|(_, id)| id).collect();
        let mut values: BTreeMap<(Member, &str), f64> = BTreeMap::new();
        let mut sources: BTreeMap<Member, CpusSource> = BTreeMap::new();
        for batch in ids.chunks(BATCH) {
            let re = batch
                .iter()
                .map(|id| regex_escape(id))
                .collect::<Vec<_>>()
                .join("|");
            let expr = format!(
                "last_over_time(apptheus_container_info{{container=~\"{re}\"{cluster}}}[{w}])"
            );
            for s in self.query(&expr, at)? {
                let (Some(node), Some(id)) = (node_of(&s.metric), s.metric.get("container")) else {
                    continue;
                };
                let source = s.metric.get("cpus_source").and_then(|v| {
                    serde_json::from_value::<CpusSource>(serde_json::Value::String(v.clone())).ok()
                });
                if let Some(source) = source {
                    sources.insert((node, id.clone()), source);
                }
            }
            for (family, over) in FAMILIES {
                let expr =
                    format!("{over}_over_time({family}{{container=~\"{re}\"{cluster}}}[{w}])");
                for s in self.query(&expr, at)? {
                    let (Some(node), Some(id)) = (node_of(&s.metric), s.metric.get("container"))
                    else {
                        continue;
                    };
                    let key = (node, id.clone());
                    if members.contains_key(&key)
                        && let Ok(v) = s.value.1.parse::<f64>()
                    {
                        values.insert((key, family), v);
                    }
                }
            }
        }
        let mut nodes: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
        for (member, (user, scheduler)) in members {
            let get = |family: &str| values.get(&(member.clone(), family)).copied();
            let Some(start) = get(START) else { continue };
            let end = get(END);
            let wall = (end.unwrap_or(at) - start).max(0.0);
            let state = if end.is_some() {
                State::Ended
            } else {
                State::Live
            };
            let cpu = get(CPU);
            let cpus = get(CPUS);
            let f = Figures {
                job_scheduler: scheduler,
                job_id: Some(job_id.to_string()),
                cpu_seconds: cpu,
                cpus_allowed: cpus,
                cpus_allowed_source: sources.get(&member).copied(),
                cpu_efficiency: match (cpu, cpus) {
                    (Some(c), Some(n)) if wall > 0.0 && n > 0.0 => {
                        Some((c / (wall * n) * 10_000.0).round() / 10_000.0)
                    }
                    _ => None,
                },
                memory_peak_bytes: get(PEAK).map(|b| b as u64),
                memory_limit_bytes: get(LIMIT).map(|b| b as u64),
                oom_kills: get(OOM).map(|n| n as u64),
                exit_code: get(EXIT).map(|c| c as u32),
                ..Figures::bare(&member.1, &user, state, start, wall)
            };
            nodes.entry(member.0).or_default().push(f);
        }
        Ok(nodes)
    }
}

const START: &str = "apptheus_container_start_time_seconds";
const END: &str = "apptheus_container_end_time_seconds";
const CPU: &str = "apptheus_container_cpu_usage_seconds_total";
const CPUS: &str = "apptheus_container_spec_cpus";
const PEAK: &str = "apptheus_container_memory_max_usage_bytes";
const LIMIT: &str = "apptheus_container_spec_memory_limit_bytes";
const OOM: &str = "apptheus_container_oom_kills_total";
const EXIT: &str = "apptheus_container_exit_code";

/// The families a fleet report reads, and which extreme over the window it takes.
const FAMILIES: [(&str, &str); 8] = [
    (START, "min"),
    (END, "max"),
    (CPU, "max"),
    (CPUS, "max"),
    (PEAK, "max"),
    (LIMIT, "max"),
    (OOM, "max"),
    (EXIT, "last"),
];

/// A series' node: the agents' `node` label, else its `instance` without the port.
fn node_of(labels: &BTreeMap<String, String>) -> Option<String> {
    labels.get("node").cloned().or_else(|| {
        labels.get("instance").map(|i| match i.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
            _ => i.clone(),
        })
    })
}

/// A PromQL string literal's content.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `s` matched literally inside a PromQL regex (RE2), written in a string literal.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    escape(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_literals() {
        let l = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            node_of(&l(&[("node", "n1"), ("instance", "x:1")])).as_deref(),
            Some("n1")
        );
        assert_eq!(
            node_of(&l(&[("instance", "della-k1:9091")])).as_deref(),
            Some("della-k1")
        );
        assert_eq!(
            node_of(&l(&[("instance", "[::1]")])).as_deref(),
            Some("[::1]")
        );
        assert_eq!(node_of(&l(&[])), None);
        assert_eq!(regex_escape("a.b_1+"), "a\\\\.b_1\\\\+");
        assert_eq!(escape("x\"y"), "x\\\"y");
    }
}
