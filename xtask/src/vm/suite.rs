//! Integration test binaries in a guest: build them without running (`cargo test --no-run`),
//! find the executable in cargo's JSON messages, and read libtest's verdict from the console.
use std::{path::PathBuf, process::Stdio};

use anyhow::{Context as _, Result, bail};

/// Build what the integration tests start (the daemon, apptheus-exec, the workload example)
/// and the test binaries of `suites` (`apptheus/tests/<suite>.rs`); each suite's executable.
pub fn build(suites: &[String]) -> Result<Vec<(String, PathBuf)>> {
    crate::status(crate::cargo().args(crate::CLIENT_AND_DAEMON).args([
        "--examples",
        "--features",
        crate::TEST_FEATURES,
    ]))?;
    let mut cmd = crate::cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json",
        "--package",
        "apptheus",
        "--features",
        crate::TEST_FEATURES,
    ]);
    for s in suites {
        cmd.args(["--test", s]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let messages = String::from_utf8_lossy(&out.stdout);
    suites
        .iter()
        .map(|s| {
            executable(&messages, s)
                .map(|exe| (s.clone(), exe))
                .with_context(|| format!("cargo built no test executable named {s}"))
        })
        .collect()
}

/// The executable of the integration test target `suite` in cargo's JSON messages.
fn executable(messages: &str, suite: &str) -> Option<PathBuf> {
    messages.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let target = v.get("target")?;
        let is_test = target
            .get("kind")?
            .as_array()?
            .iter()
            .any(|k| k.as_str() == Some("test"));
        (v.get("reason")?.as_str()? == "compiler-artifact"
            && is_test
            && target.get("name")?.as_str()? == suite)
            .then(|| v.get("executable")?.as_str().map(PathBuf::from))
            .flatten()
    })
}

/// The line the guest prints before each suite when it runs several.
const SUITE_MARK: &str = "apptheus-vm: suite ";

/// The guest command for `suites`: one test binary as it is, several one after the other in one
/// boot (each announced on the console; the status is the first failing one's).
pub fn command(suites: &[(String, PathBuf)], extra: &[String]) -> Vec<String> {
    if let [(_, exe)] = suites {
        return test_args(exe, extra);
    }
    let mut script = String::from("st=0\n");
    for (name, exe) in suites {
        let args: Vec<String> = test_args(exe, extra)
            .iter()
            .map(|a| super::guest::sh_quote(a))
            .collect();
        script.push_str(&format!(
            "echo {}\n{} || {{ s=$?; [ $st -eq 0 ] && st=$s; }}\n",
            super::guest::sh_quote(&format!("{SUITE_MARK}{name}")),
            args.join(" ")
        ));
    }
    script.push_str("exit $st\n");
    vec!["/bin/sh".to_string(), "-c".to_string(), script]
}

/// Each suite's part of a console log (the whole log for one suite).
pub fn split_log<'a>(log: &'a str, suites: &[String]) -> Vec<(String, &'a str)> {
    if let [one] = suites {
        return vec![(one.clone(), log)];
    }
    suites
        .iter()
        .map(|name| {
            let mark = format!("{SUITE_MARK}{name}\n");
            let part = log.find(&mark).map_or("", |i| {
                let rest = &log[i + mark.len()..];
                rest.find(SUITE_MARK).map_or(rest, |j| &rest[..j])
            });
            (name.clone(), part)
        })
        .collect()
}

/// libtest's verdict, read from a console log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The `test result: ...` line without its prefix.
    pub result: Option<String>,
    /// Tests seen to pass (a line of its own: output of the test between the name and "ok"
    /// hides it, the count in `result` does not miss it).
    pub passed: Vec<String>,
    /// The failed tests, from libtest's closing `failures:` list.
    pub failed: Vec<String>,
    /// Each failed test's panic message (the line after "panicked at ...").
    pub messages: Vec<(String, String)>,
}

impl Verdict {
    /// The panic message of the failed test `name` ("" when none was seen).
    pub fn message(&self, name: &str) -> &str {
        self.messages
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, m)| m.as_str())
    }

    pub fn parse(log: &str) -> Verdict {
        let mut v = Verdict::default();
        let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
        let mut current: Option<&str> = None;
        for (i, line) in lines.iter().enumerate() {
            if let Some(r) = line.strip_prefix("test result: ") {
                v.result = Some(r.to_string());
            } else if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|l| l.strip_suffix(" stdout ----"))
            {
                current = Some(name);
            } else if line.starts_with("thread '")
                && line.contains(" panicked at ")
                && let Some(name) = current.take()
            {
                let mut msg: Vec<&str> = lines[i + 1..]
                    .iter()
                    .take_while(|l| !l.is_empty() && !l.starts_with("stack backtrace:"))
                    .take(4)
                    .map(|l| l.trim())
                    .collect();
                if msg.is_empty() {
                    msg.push("(no message)");
                }
                v.messages.push((name.to_string(), msg.join(" / ")));
            } else if let Some(rest) = line.strip_prefix("test ")
                && let Some(name) = rest.strip_suffix(" ... ok")
            {
                v.passed.push(name.to_string());
            } else if *line == "failures:" {
                // The closing list: indented names up to a blank line (the first "failures:"
                // heads the tests' output, whose lines are "---- name stdout ----").
                let names: Vec<String> = lines[i + 1..]
                    .iter()
                    .skip_while(|l| l.is_empty())
                    .take_while(|l| l.starts_with("    ") && !l.trim().is_empty())
                    .map(|l| l.trim().to_string())
                    .collect();
                if !names.is_empty() {
                    v.failed = names;
                }
            }
        }
        v
    }
}

/// The arguments for a test binary run in a guest: one test at a time unless told otherwise,
/// no colours on the serial console.
pub fn test_args(exe: &std::path::Path, extra: &[String]) -> Vec<String> {
    let mut args = vec![exe.to_string_lossy().into_owned()];
    if !extra.iter().any(|a| a.starts_with("--test-threads")) {
        args.push("--test-threads=1".to_string());
    }
    if !extra.iter().any(|a| a.starts_with("--color")) {
        args.push("--color=never".to_string());
    }
    args.extend(extra.iter().cloned());
    args
}

/// A shell script for the guest that prints the facts the test bed promises and fails if one
/// is missing (`cargo xtask vm --check`).
pub fn self_check_script(release: &str, workspace: &std::path::Path) -> Vec<String> {
    let ws = super::guest::sh_quote(&workspace.join("Cargo.toml").to_string_lossy());
    let release = super::guest::sh_quote(release);
    let script = format!(
        r#"fail=0
check() {{ if "$@" >/dev/null 2>&1; then echo "check ok:     $what"; else echo "check FAILED: $what"; fail=1; fi; }}
has_all() {{ for w in cpu io memory pids; do grep -qw "$w" "$1" || return 1; done; }}
echo "uname -r:               $(uname -r)"
echo "cgroup.controllers:     $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "mounts:"; grep -E ' (/|/sys/fs/cgroup|/sys/kernel/tracing|/sys/fs/bpf|/tmp|/run|/run/apptheus-vm) ' /proc/mounts | sed 's/^/    /'
what="kernel is {release}";                     check test "$(uname -r)" = {release}
what="cgroup2 at /sys/fs/cgroup";               check grep -q '^cgroup2 /sys/fs/cgroup cgroup2 ' /proc/mounts
what="no cgroup v1 hierarchy";                  check sh -c '! grep -q " cgroup " /proc/mounts'
what="no v1 controllers in /proc/cgroups";      check sh -c '! awk "NR>1 && \$2!=0" /proc/cgroups | grep -q .'
what="controllers cpu io memory pids";          check has_all /sys/fs/cgroup/cgroup.controllers
what="cpu io memory pids enabled for children"; check has_all /sys/fs/cgroup/cgroup.subtree_control
what="tracefs at /sys/kernel/tracing";          check grep -q '^tracefs /sys/kernel/tracing tracefs ' /proc/mounts
what="sched_process_fork tracepoint";           check test -r /sys/kernel/tracing/events/sched/sched_process_fork/format
what="bpffs at /sys/fs/bpf";                    check grep -q ' /sys/fs/bpf bpf ' /proc/mounts
what="BTF at /sys/kernel/btf/vmlinux";          check test -s /sys/kernel/btf/vmlinux
what="root is an overlay";                      check grep -q '^overlay / overlay ' /proc/mounts
what="root is writable";                        check sh -c 'echo x > /var/tmp/.apptheus-vm-check && rm /var/tmp/.apptheus-vm-check'
what="tmpfs on /tmp";                           check grep -q '^tmpfs /tmp tmpfs ' /proc/mounts
what="workspace visible";                       check test -f {ws}
what="loopback up";                             check sh -c 'cat /sys/class/net/lo/operstate | grep -qv down'
what="a non-loopback IPv4 address";             check sh -c 'ip -4 addr show apptheus0 | grep -q 192.0.2.1'
what="the host name resolves";                  check getent hosts "$(hostname)"
what="modules of this kernel";                  check test -f /lib/modules/$(uname -r)/modules.dep
echo "checks failed: $fail"
exit $fail
"#
    );
    vec!["/bin/sh".to_string(), "-c".to_string(), script]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_executable() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"apptheus"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"daemon"},"executable":"/w/target/debug/deps/daemon-1"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"tracker"},"executable":"/w/target/debug/deps/tracker-2"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable(msgs, "tracker"),
            Some(PathBuf::from("/w/target/debug/deps/tracker-2"))
        );
        assert_eq!(executable(msgs, "web"), None);
    }

    #[test]
    fn reads_the_verdict() {
        let log = "running 3 tests
test a ... ok
[  12.1] some kernel line
test b ... FAILED
test c ... apptheus-exec: warning: something
ok

failures:

---- b stdout ----

thread 'b' (12) panicked at tests/x.rs:3:5:
assertion `left == right` failed
  left: None
 right: Some(1)
stack backtrace:
   0: x

failures:
    b

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.2s
";
        let v = Verdict::parse(log);
        assert_eq!(v.passed, ["a"]);
        assert_eq!(v.failed, ["b"]);
        assert_eq!(
            v.messages,
            [(
                "b".to_string(),
                "assertion `left == right` failed / left: None / right: Some(1)".to_string()
            )]
        );
        assert_eq!(
            v.result.as_deref(),
            Some(
                "FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.2s"
            )
        );
    }

    #[test]
    fn several_suites_in_one_boot() {
        let suites = vec![
            ("tracker".to_string(), PathBuf::from("/t/tracker-1")),
            ("daemon".to_string(), PathBuf::from("/t/daemon-2")),
        ];
        let cmd = command(&suites, &[]);
        assert_eq!(cmd[..2], ["/bin/sh", "-c"]);
        assert!(cmd[2].contains(
            "echo 'apptheus-vm: suite tracker'\n/t/tracker-1 --test-threads=1 --color=never || "
        ));
        let log = "boot\napptheus-vm: suite tracker\ntest result: ok. 5 passed\napptheus-vm: suite daemon\ntest result: FAILED. 1 passed\napptheus-vm: status 101 at 9 s\n";
        let names = vec!["tracker".to_string(), "daemon".to_string()];
        let parts = split_log(log, &names);
        assert_eq!(
            Verdict::parse(parts[0].1).result.as_deref(),
            Some("ok. 5 passed")
        );
        assert_eq!(
            Verdict::parse(parts[1].1).result.as_deref(),
            Some("FAILED. 1 passed")
        );
        assert_eq!(command(&suites[..1], &[])[0], "/t/tracker-1");
    }

    #[test]
    fn one_thread_and_no_colour_by_default() {
        let exe = std::path::Path::new("/t/daemon");
        assert_eq!(
            test_args(exe, &["name".to_string()]),
            ["/t/daemon", "--test-threads=1", "--color=never", "name"]
        );
        assert_eq!(
            test_args(exe, &["--test-threads=2".to_string()]),
            ["/t/daemon", "--color=never", "--test-threads=2"]
        );
    }
}
