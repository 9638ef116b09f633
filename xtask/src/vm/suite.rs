//! Integration test binaries in a guest: build them without running (`cargo test --no-run`),
//! find the executable in cargo's JSON messages, and read libtest's verdict from the console.
use std::{path::PathBuf, process::Stdio};

use anyhow::{Context as _, Result, bail};

/// Build what the integration tests start (the daemon, apptheus-exec, the workload example)
/// and the test binary of `suite` (`apptheus/tests/<suite>.rs`); the binary's path.
pub fn build(suite: &str) -> Result<PathBuf> {
    crate::status(crate::cargo().args(["build", "--package", "apptheus", "--bins", "--examples"]))?;
    let mut cmd = crate::cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json",
        "--package",
        "apptheus",
        "--test",
        suite,
    ]);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    executable(&String::from_utf8_lossy(&out.stdout), suite)
        .with_context(|| format!("cargo built no test executable named {suite}"))
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

/// libtest's verdict, read from a console log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The `test result: ...` line without its prefix.
    pub result: Option<String>,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub ignored: Vec<String>,
}

impl Verdict {
    pub fn parse(log: &str) -> Verdict {
        let mut v = Verdict::default();
        for line in log.lines() {
            let line = line.trim_end();
            if let Some(r) = line.strip_prefix("test result: ") {
                v.result = Some(r.to_string());
            } else if let Some(rest) = line.strip_prefix("test ") {
                let Some((name, what)) = rest.rsplit_once(" ... ") else {
                    continue;
                };
                let name = name.to_string();
                match what.trim() {
                    "ok" => v.passed.push(name),
                    "FAILED" => v.failed.push(name),
                    w if w.starts_with("ignored") => v.ignored.push(name),
                    _ => {}
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
        let log = "running 3 tests\ntest a ... ok\n[  12.1] some kernel line\ntest b ... FAILED\ntest c ... ignored, slow\n\nfailures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 3.2s\n";
        let v = Verdict::parse(log);
        assert_eq!(v.passed, ["a"]);
        assert_eq!(v.failed, ["b"]);
        assert_eq!(v.ignored, ["c"]);
        assert_eq!(
            v.result.as_deref(),
            Some(
                "FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 3.2s"
            )
        );
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
