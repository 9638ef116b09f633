//! A real Prometheus server for the tests, and the tools they run: installed from Debian by
//! `cargo xtask setup --test`; a missing one fails the test with what to install.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use super::eventually;

/// A port that was free a moment ago (bound then released): another process may take it
/// before Prometheus binds it, so its one user below retries.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Attempts at a free port. A lost race is rare (one in tens of thousands of ports), so 10 in a
/// row means something else is wrong.
const PORT_ATTEMPTS: usize = 10;

/// The absolute path of an installed tool; a missing tool fails the test with what to install.
pub fn tool(name: &str, package: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing: install the Debian package `{package}` (`cargo xtask setup --test` does)"
            )
        })
}

/// A `prometheus` server on a free loopback port, scraping `target` (job `apptheus`) every
/// second into a temporary TSDB. Stopped by its pid when dropped.
pub struct Prometheus {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
    pub agent: ureq::Agent,
}

impl Prometheus {
    pub fn start(target: &str) -> Prometheus {
        Self::start_with(target, "")
    }

    /// Like `start`, with `job` added to the scrape job's settings (YAML at the job's level,
    /// e.g. `scheme: https`).
    pub fn start_with(target: &str, job: &str) -> Prometheus {
        // scrape_timeout defaults to 10 s, which Prometheus refuses above a 1 s interval.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: apptheus\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: ['{target}']\n{}",
            job.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        Self::launch(&config, &[], &[], &[])
    }

    /// A `prometheus` with `config` (prometheus.yml), `files` written beside it (name,
    /// content: rule files), extra `args` (e.g. `--enable-feature=agent`) and `env`. Its storage
    /// is a temporary directory: the TSDB, or in agent mode (an `--enable-feature` argument
    /// naming `agent`) the agent's WAL.
    pub fn launch(
        config: &str,
        files: &[(&str, &str)],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Prometheus {
        let exe = tool("prometheus", "prometheus");
        let mut dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let agent_mode = args
            .iter()
            .any(|a| a.starts_with("--enable-feature=") && a.contains("agent"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let log = dir.path().join("prometheus.log");
        // Prometheus cannot be told to bind port 0 and report the port it got, so a port that
        // was free is picked, and a lost race (another process bound it first) is retried.
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            // The agent keeps a WAL only, under its own flag.
            let (flag, storage) = if agent_mode {
                ("storage.agent.path", dir.path().join("wal"))
            } else {
                ("storage.tsdb.path", dir.path().join("tsdb"))
            };
            let child = Command::new(&exe)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--{flag}={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
            let mut p = Prometheus {
                child,
                url: format!("http://127.0.0.1:{port}"),
                dir,
                agent: agent.clone(),
            };
            let ready = eventually(Duration::from_secs(20), || {
                if let Ok(Some(st)) = p.child.try_wait() {
                    return Some(Err(st));
                }
                // Ready, and ours: whoever won the port may be another test's server (even
                // another Prometheus) answering while ours is still failing to bind.
                p.serves_storage(flag, &storage).then_some(Ok(()))
            });
            match ready {
                Some(Ok(())) => return p,
                Some(Err(st)) if p.log().contains("address already in use") => {
                    println!("prometheus: port {port} taken ({st}), trying another");
                    // Dropping p would remove the directory: take it back first.
                    dir = std::mem::replace(&mut p.dir, tempfile::tempdir().expect("tempdir"));
                }
                Some(Err(st)) => panic!("prometheus exited at start ({st}):\n{}", p.log()),
                None => panic!("prometheus not ready after 20 s:\n{}", p.log()),
            }
        }
        panic!("prometheus lost the race for a free port {PORT_ATTEMPTS} times in a row");
    }

    /// Whether the server at `url` is ready and is this Prometheus (its storage flag `flag` is
    /// `storage`).
    fn serves_storage(&self, flag: &str, storage: &std::path::Path) -> bool {
        let ready = self
            .agent
            .get(format!("{}/-/ready", self.url))
            .call()
            .is_ok_and(|r| r.status() == 200);
        let flags = || -> Option<Value> {
            let mut r = self
                .agent
                .get(format!("{}/api/v1/status/flags", self.url))
                .call()
                .ok()?;
            serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
        };
        ready
            && flags()
                .is_some_and(|f| f["data"][flag].as_str() == Some(&storage.display().to_string()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query at "now" through the HTTP API.
    pub fn query(&self, expr: &str) -> Answer {
        let resp = self
            .agent
            .get(format!("{}/api/v1/query", self.url))
            .query("query", expr)
            .call();
        let body = match resp {
            Ok(mut r) => r.body_mut().read_to_string().unwrap_or_default(),
            Err(e) => return Answer::error(format!("request failed: {e}")),
        };
        let Ok(json) = serde_json::from_str::<Value>(&body) else {
            return Answer::error(format!("not JSON: {body}"));
        };
        let status = json["status"].as_str().unwrap_or("?").to_string();
        let error = json["error"].as_str().map(str::to_owned);
        let data = &json["data"];
        // A vector or matrix answers a list of series; a scalar or string is one value.
        let series = match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
            Some(_) => vec![data["result"].clone()],
            None => Vec::new(),
        };
        Answer {
            status,
            error,
            series,
        }
    }

    /// `query` until `ok` accepts its answer or `timeout` passes; the last answer either way.
    pub fn query_until(
        &self,
        expr: &str,
        timeout: Duration,
        ok: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let end = Instant::now() + timeout;
        loop {
            let a = self.query(expr);
            if ok(&a) || Instant::now() > end {
                return a;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let ended = eventually(Duration::from_secs(10), || {
                self.child.try_wait().ok().flatten()
            });
            if ended.is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Then the TempDir field removes the configuration and the TSDB.
    }
}

/// Prometheus's answer to an instant query.
#[derive(Debug)]
pub struct Answer {
    pub status: String,
    pub error: Option<String>,
    pub series: Vec<Value>,
}

impl Answer {
    fn error(msg: String) -> Answer {
        Answer {
            status: "error".into(),
            error: Some(msg),
            series: Vec::new(),
        }
    }

    pub fn success_with_data(&self) -> bool {
        self.status == "success" && !self.series.is_empty()
    }

    /// The series whose labels include every (name, value) of `labels`.
    pub fn find(&self, labels: &[(&str, &str)]) -> Option<&Value> {
        self.series
            .iter()
            .find(|s| labels.iter().all(|(k, v)| s["metric"][k] == *v))
    }
}
