//! The node at a glance, against a real daemon: `/containers` in a real headless Chromium
//! (Debian's, driven over WebDriver by chromedriver), `apptheus-top` in a real terminal (tmux),
//! both behind basic auth and TLS.
//!
//! Every test runs as root and fails (never skips) when a tool is missing: `cargo xtask setup
//! --test` installs chromium, chromium-driver and tmux. The screenshot of the page is kept in
//! `target/test-artifacts/glance/containers.png`.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use apptheus_api::{Container, Containers, State};
use common::{Client, Daemon, Workload, bin, eventually, pki::Pki, target_dir, unique};
use fantoccini::{Locator, wd::Capabilities};
use serde_json::{Value, json};

/// A job id from a user's environment that is HTML.
const EVIL_JOB: &str = "<script>alert(1)</script>";
const USER: &str = "glance";
const PASSWORD: &str = "pass word:1";

// ------------------------------------------------------------------------------------- helpers

/// Fail with the package to install when `path` is missing.
fn need(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install Debian's {package} (cargo xtask setup --test does)"
    );
    p
}

/// The daemon's containers, as `/api/containers` gives them.
fn containers(d: &Daemon) -> Containers {
    let (status, body) = d.get("/api/containers");
    assert_eq!(status, 200, "GET /api/containers: {body}");
    serde_json::from_str(&body).unwrap()
}

fn find<'a>(view: &'a Containers, w: &Workload) -> Option<&'a Container> {
    let id = format!("apptheus-exec_{}", w.pid());
    view.containers.iter().find(|c| c.id == id)
}

fn id(w: &Workload) -> String {
    format!("apptheus-exec_{}", w.pid())
}

/// Where the tests keep what a person may want to look at afterwards.
fn artifacts() -> PathBuf {
    let dir = target_dir().parent().unwrap().join("test-artifacts/glance");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a port of its choosing, and the Chromium sessions it starts; ended (by
/// pid, with the browsers it started) when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let driver = need("/usr/bin/chromedriver", "chromium-driver");
        need("/usr/bin/chromium", "chromium");
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut port = None;
        let mut line = String::new();
        while port.is_none() && out.read_line(&mut line).unwrap_or(0) > 0 {
            // "ChromeDriver was started successfully on port 34423."
            port = line
                .trim()
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|p| p.trim_end_matches('.').parse().ok());
            line.clear();
        }
        let port = port.expect("chromedriver did not say its port");
        // Keep reading its stdout, so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Chromedriver {
            child,
            port,
            profile: tempfile::tempdir().unwrap(),
        }
    }

    /// A headless Chromium session (the flags this machine's Chromium needs as root, offline).
    async fn session(&self) -> fantoccini::Client {
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1600,420",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session from chromedriver")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        for pid in common::descendants(self.child.id() as i32) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run JavaScript in the page: its value.
async fn js(browser: &fantoccini::Client, script: &str) -> Value {
    browser
        .execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Poll `script` in the page until `done` holds for its value (or fail after 20 s).
async fn until(browser: &fantoccini::Client, script: &str, done: impl Fn(&Value) -> bool) -> Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = js(browser, script).await;
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{script} still gives {v} after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The table as the page shows it: each row's cells' text, and its charts' points.
const ROWS: &str = r##"return Array.from(document.querySelectorAll("#containers tbody tr")).map((tr) => ({
  cells: Array.from(tr.cells).slice(0, 12).map((td) => td.textContent),
  charts: Array.from(tr.querySelectorAll("svg.chart")).map((svg) =>
    Array.from(svg.querySelectorAll("polyline")).reduce(
      (n, p) => n + p.getAttribute("points").trim().split(/\s+/).length, 0)),
}));"##;

fn ids_of(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells"][0].as_str().unwrap().to_string())
        .collect()
}

/// A private tmux server (its own socket) with one window running a plain shell; killed when
/// dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    const PROMPT: &str = "glance-prompt$";

    fn start(width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: unique("glance-tmux"),
        };
        let shell = format!(
            "env -i PATH=/usr/bin:/bin TERM=xterm-256color PS1='{} ' bash --norc --noprofile",
            Self::PROMPT
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &shell,
        ]);
        let ready = eventually(Duration::from_secs(10), || {
            tmux.screen().contains(Self::PROMPT).then_some(())
        });
        assert!(
            ready.is_some(),
            "no shell prompt in tmux: {}",
            tmux.screen()
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(need("/usr/bin/tmux", "tmux"))
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Type `keys` (tmux key names: "Enter", "q", a literal line).
    fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    /// Whether the pane shows the alternate screen (a full-screen program runs).
    fn alternate(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "t", "#{alternate_on}"])
            .trim()
            == "1"
    }

    /// Wait until the screen satisfies `f`.
    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        eventually(Duration::from_secs(20), || {
            let s = self.screen();
            f(&s).then_some(s)
        })
        .unwrap_or_else(|| panic!("tmux: {what} not seen after 20 s:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Only our own server, by its own socket.
        let _ = Command::new("/usr/bin/tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The container ids of the rows of a table screen (`apptheus-top`'s or `--once`'s), in order.
fn rows_of(screen: &str) -> Vec<String> {
    screen
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("CONTAINER"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("apptheus-exec_"))
        .map(str::to_string)
        .collect()
}

/// `apptheus-top ARGS`: exit success, stdout, stderr.
fn top(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("apptheus-top"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run apptheus-top");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

// --------------------------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containers_page_in_chromium() {
    // 100 ms passes: a point every second, so the charts fill within seconds.
    let d = Daemon::start(&["--monitor.interval=100ms"]);
    let mut busy = d.exec_workload(&["ready", "burn:600"]);
    // It allocates once it is in its cgroup (memory stays charged where it was allocated).
    let mut evil = d.exec_workload_env(
        &["ready", "wait", "alloc:48", "wait"],
        &[("SLURM_JOB_ID", EVIL_JOB)],
    );
    let mut ended = d.exec_workload(&["ready", "wait", "exit:3"]);
    for w in [&mut busy, &mut evil, &mut ended] {
        w.ready();
    }
    let points = |view: &Containers, w: &Workload| {
        find(view, w)
            .and_then(|c| c.history.as_ref())
            .map_or(0, |h| h.cpu_cores.len())
    };
    let seen = eventually(Duration::from_secs(30), || {
        let view = containers(&d);
        (points(&view, &evil) >= 1).then_some(())
    });
    assert!(seen.is_some(), "{:#?}", containers(&d));
    evil.go();
    assert_eq!(evil.line(), "alloc ok");
    // Three containers, each with a few points; then one ends.
    let seen = eventually(Duration::from_secs(30), || {
        let view = containers(&d);
        [&busy, &evil, &ended]
            .iter()
            .all(|w| points(&view, w) >= 3)
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "not three containers with points:\n{:#?}",
        containers(&d)
    );
    ended.go();
    assert_eq!(ended.wait().code(), Some(3));
    let view = eventually(Duration::from_secs(30), || {
        let view = containers(&d);
        let ok = find(&view, &ended)
            .is_some_and(|c| c.state == State::Ended && c.exit_code == Some(3))
            && find(&view, &evil).is_some_and(|c| c.memory_bytes > Some(40 << 20));
        ok.then_some(view)
    })
    .unwrap_or_else(|| {
        panic!(
            "not one ended with exit code 3, one with 48 MiB:\n{:#?}",
            containers(&d)
        )
    });
    assert!(
        view.containers
            .iter()
            .filter(|c| c.state == State::Live)
            .all(|c| c.exit_code.is_none()),
        "{view:#?}"
    );
    assert_eq!(view.containers.len(), 3);

    // The server's HTML: one response, nothing from elsewhere, the job id as text.
    let page = d.client.agent.get(&d.url("/containers")).call().unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    let html = page.into_body().read_to_string().unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains(EVIL_JOB));
    for external in ["src=", "<link", "@import", "url("] {
        assert!(!html.contains(external), "{external} in the page");
    }

    let driver = Chromedriver::start();
    let browser = driver.session().await;
    browser.goto(&d.url("/containers")).await.unwrap();
    // The script ran and refreshed the table from the JSON, twice.
    until(
        &browser,
        "return Number(document.body.dataset.refreshes)",
        |v| v.as_u64().is_some_and(|n| n >= 2),
    )
    .await;
    let rows = js(&browser, ROWS).await;
    println!("rows: {rows:#}");
    let rows = rows.as_array().unwrap().clone();
    assert_eq!(rows.len(), 3);
    let row = |w: &Workload| {
        rows.iter()
            .find(|r| r["cells"][0] == id(w))
            .unwrap_or_else(|| panic!("no row for {}", id(w)))
            .clone()
    };
    // The job id shows as the text it is; no script of it ran (an alert would be open, the
    // title changed), and the page holds no script but its own.
    assert_eq!(row(&evil)["cells"][2], EVIL_JOB);
    assert!(
        browser.get_alert_text().await.is_err(),
        "an alert is open: the job id ran as a script"
    );
    let title = js(&browser, "return document.title").await;
    assert_eq!(title, format!("apptheus: {}", view.host));
    assert_eq!(js(&browser, "return document.scripts.length").await, 1);
    // States, and the rest of the columns.
    assert_eq!(row(&busy)["cells"][3], "live");
    assert_eq!(row(&ended)["cells"][3], "ended");
    assert_eq!(row(&ended)["cells"][11], "3", "the tracker's exit code");
    assert_eq!(row(&busy)["cells"][11], "—", "no exit code while it lives");
    assert_eq!(row(&busy)["cells"][2], "—", "no job");
    // Charts: a CPU and a memory line for every container, with points.
    for r in &rows {
        let charts: Vec<u64> = r["charts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect();
        assert_eq!(charts.len(), 2, "{r}");
        assert!(charts.iter().all(|&n| n >= 2), "charts without points: {r}");
    }
    // Busiest first; a click on a heading sorts by it, a second click the other way.
    assert_eq!(ids_of(&Value::Array(rows.clone()))[0], id(&busy));
    let mut sorted = vec![id(&busy), id(&evil), id(&ended)];
    sorted.sort();
    let by_name = browser.find(Locator::Css("th[data-key=id]")).await.unwrap();
    by_name.click().await.unwrap();
    let rows = until(&browser, ROWS, |r| ids_of(r) == sorted).await;
    assert_eq!(ids_of(&rows), sorted);
    by_name.click().await.unwrap();
    sorted.reverse();
    until(&browser, ROWS, |r| ids_of(r) == sorted).await;
    let sort = js(
        &browser,
        "return document.querySelector('th[data-key=id]').getAttribute('aria-sort')",
    )
    .await;
    assert_eq!(sort, "descending");

    // Busiest first again, for the picture.
    browser
        .find(Locator::Css("th[data-key=cpu]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&browser, ROWS, |r| ids_of(r)[0] == id(&busy)).await;
    let png = browser.screenshot().await.unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a screenshot"
    );
    let path = artifacts().join("containers.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    browser.close().await.unwrap();
}

#[test]
fn apptheus_top_in_a_terminal() {
    let d = Daemon::start(&[]);
    let mut busy = [
        d.exec_workload(&["ready", "burn:600"]),
        d.exec_workload(&["ready", "burn:600"]),
    ];
    let mut idle = d.exec_workload(&["ready", "wait"]);
    busy.iter_mut().for_each(Workload::ready);
    idle.ready();
    let busy_ids = [id(&busy[0]), id(&busy[1])];
    // Both busy ones measurably busy, the idle one not.
    let seen = eventually(Duration::from_secs(30), || {
        let view = containers(&d);
        let cpu = |w: &Workload| find(&view, w).and_then(|c| c.cpu_cores);
        (busy.iter().all(|w| cpu(w).is_some_and(|c| c > 0.05))
            && cpu(&idle).is_some_and(|c| c < 0.02))
        .then_some(())
    });
    assert!(
        seen.is_some(),
        "not two busy and one idle:\n{:#?}",
        containers(&d)
    );
    let address = format!("http://127.0.0.1:{}", d.port);

    // --once: plain text, a header and a line per container, busiest first.
    let (ok, out, err) = top(&["--once", "--address", &address]);
    assert!(ok, "apptheus-top --once: {err}");
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "CONTAINER",
            "USER",
            "JOB",
            "STATE",
            "AGE",
            "CPU",
            "CPU-TIME",
            "MEMORY",
            "PEAK",
            "LIMIT",
            "PROCS",
            "EXIT"
        ]
    );
    // Numbers end where their heading does.
    let cpu_end = lines[0].find(" CPU ").unwrap() + 4;
    for line in &lines[1..] {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 12, "{line}");
        assert_eq!(
            (f[1], f[2], f[3], f[11]),
            ("root", "-", "live", "-"),
            "{line}"
        );
        assert!(f[5].parse::<f64>().is_ok(), "CPU {line}");
        assert!(f[7].ends_with('B'), "memory {line}");
        let b = line.as_bytes();
        assert!(
            b[cpu_end - 1] != b' ' && b[cpu_end] == b' ',
            "CPU not aligned: {line}"
        );
    }
    let once = rows_of(&out);
    assert!(
        busy_ids.contains(&once[0]) && busy_ids.contains(&once[1]),
        "{out}"
    );
    assert_eq!(once[2], id(&idle), "{out}");

    // The live view, in a real terminal.
    let tmux = Tmux::start(160, 30);
    let cmd = format!("{} --address {address}", bin("apptheus-top").display());
    tmux.send(&[&cmd, "Enter"]);
    let screen = tmux.wait_for("three rows", |s| rows_of(s).len() == 3);
    println!("{screen}");
    std::fs::write(artifacts().join("top.txt"), &screen).unwrap();
    let shown = rows_of(&screen);
    assert!(
        busy_ids.contains(&shown[0]) && busy_ids.contains(&shown[1]),
        "{screen}"
    );
    assert_eq!(shown[2], id(&idle), "{screen}");
    assert!(tmux.alternate(), "the live view is on the alternate screen");
    // n: by name.
    tmux.send(&["n"]);
    let mut by_name = shown.clone();
    by_name.sort();
    tmux.wait_for("rows by name", |s| rows_of(s) == by_name);
    // q: the shell's prompt again, the main screen, the terminal as it was.
    tmux.send(&["q"]);
    let screen = tmux.wait_for("the prompt", |s| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim() == Tmux::PROMPT)
    });
    assert!(
        !tmux.alternate(),
        "still on the alternate screen:\n{screen}"
    );
    tmux.send(&["echo top-exit=$?", "Enter"]);
    tmux.wait_for("the exit status", |s| s.contains("top-exit=0"));
    // Raw mode off: the line discipline edits and echoes again.
    tmux.send(&[
        "stty -a | grep -qw -e -icanon -e -echo && echo modes=raw || echo modes=cooked",
        "Enter",
    ]);
    let screen = tmux.wait_for("the terminal's modes", |s| {
        s.lines()
            .any(|l| l.trim() == "modes=raw" || l.trim() == "modes=cooked")
    });
    assert!(
        screen.lines().any(|l| l.trim() == "modes=cooked"),
        "the terminal was left raw:\n{screen}"
    );
}

#[test]
fn behind_basic_auth_and_tls_the_page_and_top_need_credentials() {
    let pki = Pki::new();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let config = pki.config(&format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
         basic_auth_users:\n  {USER}: '{hash}'\n"
    ));
    let good = pki.client(Some((USER, PASSWORD)), false);
    let flag = format!("--web.config.file={}", config.display());
    let trust = format!("--trust.path={}", bin("apptheus-exec").display());
    let d = Daemon::start_client(&[&trust, &flag], &[], good.clone());
    let mut w = d.exec_workload(&["ready", "wait"]);
    w.ready();
    let seen = eventually(Duration::from_secs(10), || {
        find(&containers(&d), &w).map(|_| ())
    });
    assert!(seen.is_some());

    // The page and its JSON: 401 with a challenge without credentials or with wrong ones.
    let get = |client: &Client, path: &str| {
        let mut req = client.agent.get(&d.url(path));
        if let Some(a) = &client.authorization {
            req = req.header("Authorization", a);
        }
        let mut r = req.call().unwrap();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            challenge,
            r.body_mut().read_to_string().unwrap(),
        )
    };
    for client in [
        pki.client(None, false),
        pki.client(Some((USER, "wrong")), false),
    ] {
        for path in ["/", "/containers", "/api/containers"] {
            let (status, challenge, _) = get(&client, path);
            assert_eq!(
                (status, challenge.as_deref()),
                (401, Some("Basic")),
                "{path}"
            );
        }
    }
    for path in ["/", "/containers", "/api/containers"] {
        let (status, _, body) = get(&good, path);
        assert_eq!(status, 200, "{path}");
        if path != "/" {
            assert!(body.contains(&id(&w)), "{path}: {body}");
        }
    }

    // apptheus-top: a clear error and a failing exit without credentials, with a wrong
    // password, or without the CA; the table with them.
    let address = format!("https://127.0.0.1:{}", d.port);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (right, wrong) = (
        file("right", &format!("{PASSWORD}\n")),
        file("wrong", "nope\n"),
    );
    let ca = pki.path("ca.pem").display().to_string();
    let tls = ["--address", &address, "--tls.ca-file", &ca];
    let creds = |pw: &str| {
        [
            "--auth.user".to_string(),
            USER.to_string(),
            "--auth.password-file".to_string(),
            pw.to_string(),
        ]
    };
    let run = |extra: &[String]| {
        let mut args: Vec<String> = tls.iter().map(|s| s.to_string()).collect();
        args.extend_from_slice(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        top(&args)
    };
    for once in [true, false] {
        let flag = if once {
            vec!["--once".to_string()]
        } else {
            vec![]
        };
        let (ok, out, err) = run(&flag);
        assert!(!ok && out.is_empty(), "{out}");
        assert!(
            err.contains("401 Unauthorized") && err.contains("--auth.user"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
    let (ok, _, err) = run(&[&["--once".to_string()][..], &creds(&wrong)].concat());
    assert!(!ok && err.contains("refused"), "{err}");
    let (ok, out, err) = run(&[&["--once".to_string()][..], &creds(&right)].concat());
    assert!(ok, "{err}");
    assert_eq!(rows_of(&out), [id(&w)], "{out}");
    // Without the CA the certificate is not trusted; with verification off it is not checked.
    let mut args = vec!["--once", "--address", &address];
    let c = creds(&right);
    args.extend(c.iter().map(String::as_str));
    let (ok, _, err) = top(&args);
    assert!(!ok && err.contains("cannot reach"), "{err}");
    args.push("--tls.insecure-skip-verify");
    let (ok, out, err) = top(&args);
    assert!(ok && rows_of(&out) == [id(&w)], "{out}{err}");
    w.go();
    assert!(w.wait().success());
}
