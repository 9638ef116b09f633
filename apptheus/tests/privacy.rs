//! `--privacy.hash-salt-file`, for real: two users made for the test (useradd, removed at the
//! end) run launchers through a daemon with the flag on; neither their names nor their uids
//! appear in /metrics, the state file or the daemon's log lines at info level and above, where
//! they are keyed hashes (HMAC-SHA256 with the salt, checked against `openssl dgst -hmac`). A
//! second daemon with the same salt publishes the same hash; a bad salt file stops the daemon
//! with exit 2 naming the flag.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{Daemon, Workload, bin, eventually, prometheus::tool, users::TestUser, workload_bin};

/// A salt file as the flag wants it: root's, 0600.
fn salt_file(dir: &Path, salt: &str) -> PathBuf {
    let p = dir.join("salt");
    std::fs::write(&p, format!("{salt}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The published form of `value`: "u-" and the first 16 hex digits of HMAC-SHA256(salt, value),
/// computed by openssl, independently of the daemon's code.
fn expected_hash(salt: &str, value: &str) -> String {
    let out = Command::new(tool("openssl", "openssl"))
        .args(["dgst", "-sha256", "-hmac", salt])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(value.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl dgst");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.rsplit("= ").next().unwrap().trim();
    format!("u-{}", &hex[..16])
}

/// Every label value of a metrics text.
fn label_values(metrics: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, rest)) = line.split_once('{') else {
            continue;
        };
        for part in rest.split("=\"").skip(1) {
            out.push(part.split('"').next().unwrap_or_default().to_string());
        }
    }
    out
}

/// Whether `text` holds `number` as a whole token (not inside a longer number).
fn has_number(text: &str, number: u32) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|t| t == number.to_string())
}

/// A launcher of `user` on `daemon`, admitted: its container id.
/// A cgroup named as systemd names a user's slice, `<unique>/user-<uid>.slice`, in the hierarchy
/// whose paths are the `cgroup` label (v1 memory, else the unified tree); removed when dropped.
struct UserSlice {
    top: PathBuf,
    slice: PathBuf,
}

impl UserSlice {
    fn new(uid: u32) -> UserSlice {
        let root = if Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
            Path::new("/sys/fs/cgroup/memory")
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let top = root.join(common::unique("apptheus-test-priv"));
        let slice = top.join(format!("user-{uid}.slice"));
        std::fs::create_dir_all(&slice)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", slice.display()));
        UserSlice { top, slice }
    }
}

impl Drop for UserSlice {
    fn drop(&mut self) {
        // The launchers in it were ended before (they are declared after it).
        let gone = eventually(Duration::from_secs(3), || {
            common::remove_cgroup_tree(&self.top);
            (!self.top.exists()).then_some(())
        });
        if gone.is_none() {
            eprintln!("test cgroup left behind: {}", self.top.display());
        }
    }
}

/// A launcher of `user` on `daemon` (started in `slice`, if given), admitted: its container id.
fn user_launcher(
    daemon: &Daemon,
    user: &TestUser,
    slice: Option<&UserSlice>,
) -> (Workload, String) {
    let cmd = match slice {
        // Root moves the shell into the slice, then it becomes the user's launcher.
        Some(s) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                    s.slice.display()
                ))
                .arg(tool("setpriv", "util-linux"))
                .args(user.setpriv_args())
                .arg(bin("apptheus-exec"));
            c
        }
        None => user.command(&bin("apptheus-exec")),
    };
    user.launch_with(cmd, daemon, &["wait"])
}

/// The user label of container `id`.
fn user_of(metrics: &str, id: &str) -> String {
    let needle = format!("apptheus_container_info{{container=\"{id}\",user=\"");
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&needle))
        .unwrap_or_else(|| panic!("no apptheus_container_info of {id}:\n{metrics}"));
    line[needle.len()..].split('"').next().unwrap().to_string()
}

/// The daemon's log lines at info, warn and error.
fn info_and_above(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            ["level=info", "level=warn", "level=error"]
                .iter()
                .any(|lv| l.contains(lv))
        })
        .collect()
}

#[test]
fn names_and_uids_never_leave_the_node_in_clear() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let salt = format!("test-salt-{}-0123456789abcdef", std::process::id());
    let salt_path = salt_file(dir.path(), &salt);
    let flag = format!("--privacy.hash-salt-file={}", salt_path.display());
    let alice = TestUser::new("a");
    let bob = TestUser::new("b");

    // alice's first launcher starts in a cgroup named like her systemd slice: the `cgroup` label
    // must not show her uid either. Declared before the daemon and the launchers: dropped last.
    let slice = UserSlice::new(alice.uid);
    let summaries = dir.path().join("summary.jsonl");
    let summary_flag = format!("--container.summary-file={}", summaries.display());
    let d = Daemon::start(&[&flag, &summary_flag]);
    // The launchers run as the users: they must reach the socket in the daemon's own directory.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_wa, id_a) = user_launcher(&d, &alice, Some(&slice));
    let (mut wb, id_b) = user_launcher(&d, &bob, None);
    // bob also runs a copy of apptheus-exec from his home: refused (untrusted), and logged at
    // warn with his uid and the path in his home, both hashed.
    let copy = bob.home.join("apptheus-exec");
    std::fs::copy(bin("apptheus-exec"), &copy).unwrap();
    nix::unistd::chown(&copy, Some(bob.uid.into()), None).unwrap();
    let mut cmd = bob.command(&copy);
    cmd.arg(format!("--socket={}", d.socket.display()))
        .arg("--")
        .arg(workload_bin())
        .args(["ready", "wait"])
        .stderr(Stdio::null());
    let mut untrusted = Workload::spawn_cmd(&mut cmd);
    untrusted.ready();
    eventually(Duration::from_secs(10), || {
        d.log_text()
            .lines()
            .any(|l| l.contains("launcher connection refused") && l.contains("reason=untrusted"))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the untrusted launcher's refusal is not logged:\n{}",
            d.log_text()
        )
    });
    // An untrusted launcher still runs its command.
    untrusted.go();
    assert!(untrusted.wait().success());

    // /metrics: hashed user and uid labels, neither name nor uid anywhere in a label.
    let metrics = d.metrics();
    for (user, id) in [(&alice, &id_a), (&bob, &id_b)] {
        let hash = expected_hash(&salt, &user.name);
        assert_eq!(user_of(&metrics, id), hash, "{}'s user label", user.name);
        let uid_hash = expected_hash(&salt, &user.uid.to_string());
        assert!(
            metrics.contains(&format!("uid=\"{uid_hash}\"")),
            "{}'s uid label is not {uid_hash}:\n{metrics}",
            user.name
        );
        assert!(
            !metrics.contains(&user.name),
            "{} in /metrics:\n{metrics}",
            user.name
        );
        for v in label_values(&metrics) {
            assert!(
                !has_number(&v, user.uid) && !v.contains(&user.home.display().to_string()),
                "a label value names {} (uid {}): {v:?}",
                user.name,
                user.uid
            );
        }
    }

    // /api/containers, /containers and the query socket show the same hashes as the labels.
    let (status, api) = d.get("/api/containers?history=0");
    assert_eq!(status, 200, "{api}");
    let (status, page) = d.get("/containers");
    assert_eq!(status, 200, "{page}");
    let answer = common::users::query(&d.query, b"containers\n");
    for user in [&alice, &bob] {
        let (hash, uid_hash) = (
            expected_hash(&salt, &user.name),
            expected_hash(&salt, &user.uid.to_string()),
        );
        for (what, text) in [("/api/containers", &api), ("the query socket", &answer)] {
            let doc: serde_json::Value = serde_json::from_str(text).unwrap();
            let shown: Vec<_> = doc["containers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["user"] == hash.as_str())
                .collect();
            assert!(!shown.is_empty(), "{what} lacks {hash}: {text}");
            for c in shown {
                assert_eq!(c["uid"], uid_hash.as_str(), "{what}: {c}");
            }
            assert!(
                !text.contains(&user.name),
                "{} in {what}: {text}",
                user.name
            );
            assert!(
                !text.contains(&format!("\"uid\":\"{}\"", user.uid)),
                "{}'s uid in {what}: {text}",
                user.name
            );
        }
        assert!(page.contains(&hash), "/containers lacks {hash}");
        assert!(!page.contains(&user.name), "{} in /containers", user.name);
    }

    let alice_uid = expected_hash(&salt, &alice.uid.to_string());
    assert!(
        metrics.contains(&format!("/user-{alice_uid}.slice")),
        "the cgroup label of alice's container in user-{}.slice does not show it hashed:\n{metrics}",
        alice.uid
    );

    // The state file, once the sampler saved both containers.
    let state = d.state_dir().join("containers.json");
    let saved = eventually(Duration::from_secs(10), || {
        let s = std::fs::read_to_string(&state).ok()?;
        (s.contains(&id_a) && s.contains(&id_b)).then_some(s)
    })
    .expect("containers.json holds both containers");
    // Every value but the cgroup paths (cgroup, made_parents, adopted) and the owner: the state
    // file keeps the real paths (a restarted daemon finds the cgroups by them; the file is
    // root's, 0600, and never leaves the node), so alice's slice shows there, and only there;
    // and the launcher's raw uid (`owner`: whom the query socket shows the container to).
    let doc: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let mut values = Vec::new();
    fn strings(v: &serde_json::Value, key: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| strings(v, k, out)),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, key, out)),
            other => out.push((key.to_string(), other.to_string())),
        }
    }
    strings(&doc, "", &mut values);
    for user in [&alice, &bob] {
        assert!(
            !saved.contains(&user.name),
            "{} in the state file:\n{saved}",
            user.name
        );
        for (key, v) in values
            .iter()
            .filter(|(k, _)| !["cgroup", "made_parents", "adopted", "owner"].contains(&k.as_str()))
        {
            assert!(
                !has_number(v, user.uid),
                "{}'s uid in the state file ({key}: {v}):\n{saved}",
                user.name
            );
        }
        assert!(saved.contains(&expected_hash(&salt, &user.name)));
        assert!(saved.contains(&format!(
            "\"uid\":\"{}\"",
            expected_hash(&salt, &user.uid.to_string())
        )));
    }

    // The log at info and above: the accepted and refused lines carry hashes only.
    let log = d.log_text();
    let lines = info_and_above(&log);
    for user in [&alice, &bob] {
        for l in &lines {
            assert!(!l.contains(&user.name), "{} in the log: {l}", user.name);
            assert!(
                !l.contains(&format!("uid={}", user.uid))
                    && !l.contains(&format!("\"uid\":{}", user.uid)),
                "{}'s uid in the log: {l}",
                user.name
            );
            assert!(
                !l.contains(&user.home.display().to_string()),
                "{}'s home in the log: {l}",
                user.name
            );
        }
    }
    let bob_uid = expected_hash(&salt, &bob.uid.to_string());
    let refused = lines
        .iter()
        .find(|l| l.contains("launcher connection refused") && l.contains("reason=untrusted"))
        .expect("a refusal line at warn");
    assert!(refused.contains(&format!("uid={bob_uid}")), "{refused}");
    assert!(
        refused.contains("exe=p-"),
        "the home path is hashed: {refused}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("launcher connection accepted")
                && l.contains(&format!("uid={bob_uid}"))),
        "no accepted line with bob's hashed uid:\n{log}"
    );

    // bob's container ends: its summary (file, log, and the query socket's answer) shows the
    // same hashes as the labels.
    wb.go();
    assert!(wb.wait().success());
    let line = d.summary_line(&summaries, &id_b);
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    let (bob_hash, bob_uid) = (
        expected_hash(&salt, &bob.name),
        expected_hash(&salt, &bob.uid.to_string()),
    );
    assert_eq!(record["user"], bob_hash.as_str(), "{line}");
    assert_eq!(record["uid"], bob_uid.as_str(), "{line}");
    let logged = d.wait_log(0, &["container summary", &id_b]);
    assert!(
        logged.contains(&format!("user={bob_hash}")) && logged.contains(&format!("uid={bob_uid}")),
        "{logged}"
    );
    assert!(!logged.contains(&bob.name), "{logged}");
    let answer = common::users::query(&d.query, format!("container {id_b}\n").as_bytes());
    let one: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(one["container"]["summary"], record, "{answer}");
    assert_eq!(one["container"]["user"], bob_hash.as_str());

    // Another daemon ("node") with the same salt: the same hash for the same user.
    let d2 = Daemon::start(&[&flag]);
    std::fs::set_permissions(d2.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_wa2, id_a2) = user_launcher(&d2, &alice, None);
    assert_eq!(
        user_of(&d2.metrics(), &id_a2),
        user_of(&metrics, &id_a),
        "two daemons with the same salt publish the same hash"
    );
}

/// A salt file that is missing, empty, or open to others stops the daemon: exit 2, naming the
/// flag (before anything starts).
#[test]
fn bad_salt_files_stop_the_daemon() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let cases = [
        (dir.path().join("missing"), "cannot read"),
        (write("empty", "", 0o600), "is empty"),
        (
            write("readable", "0123456789abcdef-salt", 0o644),
            "users other than root",
        ),
        (
            write("writable", "0123456789abcdef-salt", 0o602),
            "users other than root",
        ),
        (write("short", "short", 0o600), "at least 16"),
    ];
    for (path, why) in cases {
        let out = Command::new(bin("apptheus"))
            .arg(format!("--privacy.hash-salt-file={}", path.display()))
            .args(["--web.listen-address=127.0.0.1:0", "--trust.path="])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
        assert!(
            err.contains("--privacy.hash-salt-file") && err.contains(why),
            "{}: {err}",
            path.display()
        );
    }
}
