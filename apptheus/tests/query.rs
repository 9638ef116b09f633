//! The query socket, for real: users made for the test (useradd, removed at the end) run
//! containers through `apptheus-exec` and ask the daemon's query socket as themselves (setpriv,
//! then a perl client): each sees its own containers only, root and a member of
//! `--query.admin-group` see all, another's container is answered as one that does not exist,
//! an ended container carries its summary record (the summary file's line). Garbage, slow and
//! flooding clients are cut off within the bounds while another user is answered.
// Test code: a failed unwrap is a failed test, with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    time::{Duration, Instant},
};

use common::{
    Daemon, eventually, sample,
    users::{TestGroup, TestUser, query, query_as},
};

/// The ids of a `containers` answer, sorted.
fn ids(answer: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(answer)
        .unwrap_or_else(|e| panic!("not a containers answer ({e}): {answer:?}"));
    let mut ids: Vec<String> = doc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The container `id` in a `containers` answer.
fn find(answer: &str, id: &str) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_str(answer).unwrap();
    doc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not in {answer}"))
}

#[test]
fn each_user_sees_their_own_root_and_admins_see_all() {
    common::require_root();
    let admins = TestGroup::new("adm");
    let alice = TestUser::new("a");
    let bob = TestUser::new("b");
    let carol = TestUser::with_groups("c", &[&admins.name]);
    let dir = tempfile::tempdir().unwrap();
    let summaries = dir.path().join("summary.jsonl");
    let d = Daemon::start(&[
        &format!("--query.admin-group={}", admins.name),
        &format!("--container.summary-file={}", summaries.display()),
    ]);
    // The users reach both sockets in the daemon's own directory.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode = std::fs::symlink_metadata(&d.query)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "the query socket is world-connectable");

    let (_wa, id_a) = alice.launch(&d, &["wait"]);
    let (mut wb, id_b) = bob.launch(&d, &["wait"]);
    // bob's container ends: its summary is written, and kept with its values.
    wb.go();
    assert!(wb.wait().success());
    let line = d.summary_line(&summaries, &id_b);

    let (mine, took) = query_as(&alice, &d.query, "containers\n");
    assert_eq!(ids(&mine), std::slice::from_ref(&id_a), "alice's own only");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (mine, _) = query_as(&bob, &d.query, "containers\n");
    assert_eq!(ids(&mine), std::slice::from_ref(&id_b), "bob's own only");
    // The ended container carries its summary: the summary file's line, value for value.
    let summary = &find(&mine, &id_b)["summary"];
    let from_file: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(summary, &from_file);
    assert_eq!(find(&mine, &id_b)["state"], "ended");
    // A live one has none; `containers` has no history, `containers history` has it.
    let (alices, _) = query_as(&alice, &d.query, "containers history\n");
    let a = find(&alices, &id_a);
    assert!(a.get("summary").is_none(), "{a}");
    assert!(a["history"].is_object(), "{a}");
    assert!(find(&mine, &id_b).get("history").is_none());

    // Root and the admin group's member see both.
    let all = [id_a.clone(), id_b.clone()];
    let mut root = ids(&query(&d.query, b"containers\n"));
    root.retain(|i| all.contains(i));
    assert_eq!(root, all);
    let (admin, _) = query_as(&carol, &d.query, "containers\n");
    assert_eq!(ids(&admin), all, "a member of --query.admin-group");

    // Another user's container is answered byte for byte as one that does not exist.
    let (other, _) = query_as(&alice, &d.query, &format!("container {id_b}\n"));
    let (none, _) = query_as(&alice, &d.query, "container nosuch_1\n");
    assert_eq!(other, none);
    assert_eq!(none, "error: no such container\n");
    let (own, _) = query_as(&bob, &d.query, &format!("container {id_b}\n"));
    let own: serde_json::Value = serde_json::from_str(&own).unwrap();
    assert_eq!(own["container"]["id"], id_b.as_str());
    assert_eq!(own["container"]["summary"], from_file);
    let (admin_one, _) = query_as(&carol, &d.query, &format!("container {id_a}\n"));
    assert!(admin_one.starts_with("{\"container\":{"), "{admin_one}");

    // The HTTP answer is unchanged: no summary there.
    let (_, api) = d.get("/api/containers?history=0");
    assert!(!api.contains("\"summary\""), "{api}");
    let metrics = d.metrics();
    let answered = sample(
        &metrics,
        "apptheus_query_requests_total",
        "outcome=\"answered\"",
    );
    // Nine requests, each answered (a not-found one included).
    assert_eq!(answered, Some(9.0));
}

/// Reads what the daemon sends until it closes, within `limit`; the text and how long it took.
fn read_all(s: &mut UnixStream, limit: Duration) -> (String, Duration) {
    let t0 = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

#[test]
fn garbage_and_floods_are_cut_off_while_others_are_answered() {
    common::require_root();
    let alice = TestUser::new("g");
    let d = Daemon::start(&[]);
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_wa, id_a) = alice.launch(&d, &["wait"]);

    // Garbage: one error line, then closed.
    for (request, error) in [
        (
            &b"\x01\x02garbage\n"[..],
            "error: request holds control characters\n",
        ),
        (b"metrics please\n", "error: unknown request"),
        (b"container \xff\xfe\n", "error: request is not UTF-8\n"),
    ] {
        let answer = query(&d.query, request);
        assert!(answer.starts_with(error), "{request:?}: {answer:?}");
        assert_eq!(answer.lines().count(), 1, "{answer:?}");
    }

    // 20 connections of root's that send nothing: 4 are held (its share), 16 told at once.
    let mut held: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&d.query).unwrap())
        .collect();
    // 10 MB from root again: one of its 4 is taken, the next is refused or cut at 1024 bytes.
    let flooder = {
        let path = d.query.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            let sent = s.write_all(&vec![b'x'; 10 << 20]);
            let (answer, _) = read_all(&mut s, Duration::from_secs(10));
            (sent.is_err(), answer, t0.elapsed())
        })
    };
    // Meanwhile alice is answered, at once.
    let (mine, took) = query_as(&alice, &d.query, "containers\n");
    assert_eq!(ids(&mine), [id_a]);
    assert!(took < Duration::from_secs(1), "alice waited {took:?}");

    let (mut refused, mut timed_out) = (0, 0);
    for s in &mut held {
        let (answer, took) = read_all(s, Duration::from_secs(5));
        match answer.as_str() {
            "error: too many connections\n" => refused += 1,
            a if a.starts_with("error: no request line") => {
                timed_out += 1;
                assert!(took < Duration::from_secs(3), "held {took:?}");
            }
            a => panic!("unexpected answer {a:?}"),
        }
    }
    assert!(refused >= 16, "{refused} refused, {timed_out} timed out");
    assert!(timed_out <= 4, "{refused} refused, {timed_out} timed out");
    let (write_failed, answer, took) = flooder.join().unwrap();
    assert!(write_failed, "10 MB were taken whole");
    assert!(
        answer == "error: too many connections\n" || answer.starts_with("error: request too long"),
        "{answer:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the flood was cut off after {took:?}"
    );
    drop(held);

    // And after all that, answers again.
    let again = query(&d.query, b"containers\n");
    assert!(again.starts_with("{\"time\":"), "{again}");
    let metrics = d.metrics();
    let count = |o: &str| {
        sample(
            &metrics,
            "apptheus_query_requests_total",
            &format!("outcome=\"{o}\""),
        )
        .unwrap_or(0.0)
    };
    assert!(count("refused") >= 16.0, "{metrics}");
    assert!(
        count("bad_request") >= 3.0 + f64::from(timed_out),
        "{metrics}"
    );
    assert!(count("answered") >= 2.0, "{metrics}");
}

#[test]
fn a_bad_admin_group_stops_the_daemon_and_an_empty_path_turns_the_socket_off() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin("apptheus"))
        .arg("--query.admin-group=apptheus-no-such-group-42")
        .arg(format!(
            "--socket.path={}",
            dir.path().join("gw.sock").display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--query.admin-group"), "{err}");

    let d = Daemon::start(&["--query.socket-path="]);
    assert_eq!(d.query.as_os_str(), "");
    assert!(d.log_text().contains("gateway listening"));
    assert!(!d.log_text().contains("query socket listening"));
}

/// The owner is kept across a restart: a container taken back from the state file is still
/// shown to its user (and only to them).
#[test]
fn a_restart_keeps_who_owns_what() {
    common::require_root();
    let alice = TestUser::new("r");
    let bob = TestUser::new("s");
    let mut d = Daemon::start(&[]);
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_wa, id_a) = alice.launch(&d, &["wait"]);
    let state = d.state_dir().join("containers.json");
    let saved = eventually(Duration::from_secs(10), || {
        let s = std::fs::read_to_string(&state).ok()?;
        s.contains(&id_a).then_some(s)
    })
    .expect("the state file holds alice's container");
    assert!(
        saved.contains(&format!("\"owner\":{}", alice.uid)),
        "{saved}"
    );
    d.kill9();
    d.respawn();
    // Shown once the first pass after the restart published it.
    let mine = eventually(Duration::from_secs(10), || {
        let (mine, _) = query_as(&alice, &d.query, "containers\n");
        (!ids(&mine).is_empty()).then_some(mine)
    })
    .unwrap_or_else(|| panic!("alice sees nothing after the restart:\n{}", d.log_text()));
    assert_eq!(ids(&mine), std::slice::from_ref(&id_a), "after the restart");
    let (theirs, _) = query_as(&bob, &d.query, "containers\n");
    assert!(ids(&theirs).is_empty(), "{theirs}");
}
