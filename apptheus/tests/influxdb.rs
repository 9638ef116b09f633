//! The seed's central store: InfluxDB 1.x fed by a node's Prometheus agent through its Prometheus
//! remote-write endpoint (deploy/influxdb/agent.yml, as shipped but for its target, its URL's host
//! and intervals of a second), read back with InfluxQL as docs/guide.md shows it.
//!
//! Every tool is real (Debian's `influxdb` 1.6 and `prometheus`; `cargo xtask setup --test`
//! installs them); a missing one fails the test naming its package.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Daemon, Workload, bin, eventually, fleet,
    prometheus::{Prometheus, tool},
    static_port, unique, workload_bin,
};
use serde_json::{Value, json};

/// An influxd of its own: data, ports and log in a temporary directory; stopped by pid.
struct Influx {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Influx {
    /// Start it and create the database `apptheus`.
    fn start() -> Influx {
        let exe = tool("influxd", "influxdb");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (rpc, http) = (static_port(), static_port());
        let conf = dir.path().join("influxdb.conf");
        std::fs::write(
            &conf,
            format!(
                "reporting-enabled = false\nbind-address = \"127.0.0.1:{rpc}\"\n\
                 [meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n\
                 [monitor]\n  store-enabled = false\n\
                 [http]\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n\
                 [ifql]\n  enabled = false\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("influxd.log")).unwrap();
        let child = Command::new(exe)
            .arg("-config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start influxd");
        let mut influx = Influx {
            child,
            url: format!("http://127.0.0.1:{http}"),
            _dir: dir,
        };
        let up = eventually(Duration::from_secs(20), || {
            if let Ok(Some(st)) = influx.child.try_wait() {
                panic!("influxd exited at start ({st}):\n{}", influx.log());
            }
            influx.query("CREATE DATABASE apptheus").ok()
        });
        assert!(
            up.is_some(),
            "influxd did not answer within 20 s:\n{}",
            influx.log()
        );
        influx
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("influxd.log")).unwrap_or_default()
    }

    /// An InfluxQL statement on database `apptheus`: the first statement's series.
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let out = Command::new("curl")
            .args(["-sf", "-XPOST", &format!("{}/query?db=apptheus", self.url)])
            .args(["--data-urlencode", &format!("q={q}")])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("{out:?}"));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        if let Some(e) = v["results"][0]["error"].as_str() {
            return Err(e.to_string());
        }
        Ok(v["results"][0]["series"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/influxdb/agent.yml for one node: scrapes `target`, writes to `influx` (its URL's path
/// and query as shipped, its host ours); intervals of a second.
fn agent_config(target: &str, influx: &str) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/influxdb/agent.yml"),
    )
    .unwrap();
    let mut c = fleet::yaml(&shipped);
    c["global"]["scrape_interval"] = json!("1s");
    c["global"]["scrape_timeout"] = json!("1s");
    c["scrape_configs"][0]["static_configs"] = json!([{ "targets": [target] }]);
    let rw = &mut c["remote_write"][0];
    let url = rw["url"].as_str().unwrap().to_string();
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .unwrap();
    assert_eq!(path, "/api/v1/prom/write?db=apptheus", "as shipped");
    rw["url"] = json!(format!("{influx}{path}"));
    rw["queue_config"] = json!({ "batch_send_deadline": "1s" });
    c.to_string()
}

/// The agent remote-writes the daemon's series into InfluxDB: a container's CPU time, its node
/// and its job are there, and read back with the InfluxQL of docs/guide.md: its last value, a
/// job's containers through `apptheus_container_job_info`, then their CPU time.
#[test]
fn an_agent_feeds_influxdb_and_influxql_reads_it_back() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/influxdb/agent.yml");
    let check = Command::new(tool("promtool", "prometheus"))
        .args(["check", "config", "--agent"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check config --agent: {check:?}"
    );
    let influx = Influx::start();
    let d = Daemon::start(&["--monitor.interval=200ms"]);
    let node = unique("influx");
    let _agent = Prometheus::launch(
        &agent_config(&format!("127.0.0.1:{}", d.port), &influx.url),
        &[],
        &["--enable-feature=agent,expand-external-labels"],
        &[("APPTHEUS_NODE", node.as_str())],
    );
    let job = format!("7{}", std::process::id());
    let mut w = Workload::spawn_cmd(
        Command::new(bin("apptheus-exec"))
            .arg(format!("--socket={}", d.socket.display()))
            .arg("--")
            .arg(workload_bin())
            .args(["burn:1.5", "ready", "wait"])
            .env("SLURM_JOB_ID", &job),
    );
    w.ready();
    let id = format!("apptheus-exec_{}", w.pid());

    // The container's CPU time, its last value (guide: "InfluxDB 1.x as the store").
    let q = format!(
        "SELECT last(\"value\") FROM \"apptheus_container_cpu_usage_seconds_total\" \
         WHERE \"container\" = '{id}' GROUP BY \"node\""
    );
    let mut last = Vec::new();
    let cpu = eventually(Duration::from_secs(30), || {
        last = influx.query(&q).ok()?;
        let v = last.first()?["values"][0][1].as_f64()?;
        (v >= 1.4).then_some(v)
    })
    .unwrap_or_else(|| panic!("{q}: {last:?} within 30 s:\n{}", influx.log()));
    assert_eq!(last[0]["tags"]["node"], node.as_str(), "{last:?}");
    let m = d.metrics();
    let now = common::sample(
        &m,
        "apptheus_container_cpu_usage_seconds_total",
        &format!("container=\"{id}\""),
    )
    .unwrap();
    assert!(
        cpu <= now + 1e-9 && cpu >= 1.4,
        "InfluxDB {cpu} s, the daemon {now} s"
    );
    println!("{q}\n  -> {cpu} s (the daemon: {now} s)");

    // A job's containers: InfluxQL joins no measurements, so first the job's container ids,
    // then their CPU time.
    let q = format!(
        "SELECT last(\"value\") FROM \"apptheus_container_job_info\" \
         WHERE \"job_id\" = '{job}' GROUP BY \"node\", \"container\""
    );
    let series = eventually(Duration::from_secs(30), || {
        let s = influx.query(&q).ok()?;
        (!s.is_empty()).then_some(s)
    })
    .unwrap_or_else(|| panic!("{q}: nothing within 30 s"));
    let containers: Vec<&str> = series
        .iter()
        .filter_map(|s| s["tags"]["container"].as_str())
        .collect();
    assert_eq!(containers, [id.as_str()], "{series:?}");
    let q = format!(
        "SELECT sum(\"cpu\") FROM (SELECT last(\"value\") AS \"cpu\" FROM \
         \"apptheus_container_cpu_usage_seconds_total\" WHERE \"container\" =~ /^({})$/ \
         GROUP BY \"node\", \"container\")",
        containers.join("|")
    );
    let total = influx.query(&q).unwrap();
    let total = total[0]["values"][0][1].as_f64().unwrap();
    assert!((total - cpu).abs() < 0.5, "{q}: {total} vs {cpu}");
    println!("{q}\n  -> {total} s");
    w.go();
    assert!(w.wait().success());
}
