//! The fleet of deploy/prometheus in the tests: a node's agent (agent.yml) remote-writing to
//! the central store (central.yml), as shipped, with intervals of a second.
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::prometheus::Prometheus;

pub fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus")
        .join(file)
}

pub fn read_deploy(file: &str) -> String {
    std::fs::read_to_string(deploy(file))
        .unwrap_or_else(|e| panic!("read deploy/prometheus/{file}: {e}"))
}

/// A YAML file of deploy/ as JSON (which is YAML too: Prometheus reads it back).
pub fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("deploy YAML parses")
}

/// deploy/prometheus/agent.yml for one node: its scrape target is `target`, its remote_write
/// goes to `central`; intervals of a second. The external label `node: ${APPTHEUS_NODE}` and the
/// write relabeling stay as shipped.
pub fn agent_config(target: &str, central: &str) -> String {
    let mut c = yaml(&read_deploy("agent.yml"));
    assert_eq!(
        c["global"]["external_labels"]["node"], "${APPTHEUS_NODE}",
        "agent.yml should label every series with the node"
    );
    c["global"]["scrape_interval"] = json!("1s");
    c["global"]["scrape_timeout"] = json!("1s");
    let job = &mut c["scrape_configs"][0];
    assert_eq!(job["job_name"], "apptheus");
    job["static_configs"] = json!([{ "targets": [target] }]);
    let rw = &mut c["remote_write"][0];
    rw["url"] = json!(format!("{central}/api/v1/write"));
    rw["queue_config"] = json!({ "batch_send_deadline": "1s" });
    c.to_string()
}

/// deploy/prometheus/central.yml evaluating its rules every second, its self-scrape dropped
/// (the port is not known before it starts).
pub fn central_config() -> String {
    let mut c = yaml(&read_deploy("central.yml"));
    c["global"]["evaluation_interval"] = json!("1s");
    c["scrape_configs"] = json!([]);
    let rules = c["rule_files"].as_array().expect("rule_files");
    assert!(rules.contains(&json!("rules.yml")) && rules.contains(&json!("alerts.yml")));
    c.to_string()
}

/// The central store with the shipped rules and alerts, taking remote writes.
pub fn central() -> Prometheus {
    let (rules, alerts) = (read_deploy("rules.yml"), read_deploy("alerts.yml"));
    Prometheus::launch(
        &central_config(),
        &[
            ("rules.yml", rules.as_str()),
            ("alerts.yml", alerts.as_str()),
        ],
        &["--web.enable-remote-write-receiver"],
        &[],
    )
}

/// Node `node`'s agent: scrapes `target` (`host:port` of a daemon), writes to `central`.
pub fn agent(target: &str, central: &Prometheus, node: &str) -> Prometheus {
    Prometheus::launch(
        &agent_config(target, &central.url),
        &[],
        &["--enable-feature=agent,expand-external-labels"],
        &[("APPTHEUS_NODE", node)],
    )
}
