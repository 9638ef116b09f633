//! Harnesses of the fuzz targets in `fuzz/` (`cargo xtask fuzz`). Not an API.
//!
//! Each takes the raw bytes of a file the daemon reads, hands them to the parser the way the
//! daemon does, and asserts what must hold of the result. A harness panics only on a broken
//! invariant (or when the parser itself panics): that is what the fuzzer reports. They live in
//! the library, not in `fuzz/`, because most parsers are private; the unit tests below replay
//! the committed seeds (`fuzz/seeds/<target>/`) through them.
// Harnesses: a panic is a finding, and their unwraps state invariants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use apptheus_common::NO_FIELD;

pub use crate::cgroup::fuzzing::{
    cgroup_flat_keyed, cgroup_pressure, cgroup_v1_blkio, cgroup_v2_io_stat, cgroup_values,
    mountinfo, proc_cgroup, proc_statm,
};
use crate::{
    state,
    tracker::{
        btf,
        format::{self, Format},
        proctable::parse_stat_ppid,
    },
    webconfig::WebConfig,
};

/// A harness: the fuzz input in, a panic on a broken invariant.
pub type Harness = fn(&[u8]);

/// Every harness, by fuzz target name.
pub const HARNESSES: &[(&str, Harness)] = &[
    ("tracefs_format", tracefs_format),
    ("btf_member", btf_member),
    ("cgroup_flat_keyed", cgroup_flat_keyed),
    ("cgroup_v1_blkio", cgroup_v1_blkio),
    ("cgroup_v2_io_stat", cgroup_v2_io_stat),
    ("cgroup_values", cgroup_values),
    ("cgroup_pressure", cgroup_pressure),
    ("mountinfo", mountinfo),
    ("proc_cgroup", proc_cgroup),
    ("proc_statm", proc_statm),
    ("proc_stat", proc_stat),
    ("state_file", state_file),
    ("web_config", web_config),
];

/// The daemon reads its text files with `read_to_string`: bytes that are not UTF-8 are an error
/// before any parser sees them.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// tracefs `format` files: parsing is stable (parse, render, parse gives the same fields), and
/// the offsets handed to the eBPF programs are those of the named fields, never the "no field"
/// marker for a field that is there.
pub fn tracefs_format(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(parsed) = format::parse(text) else {
        return;
    };
    let again = format::parse(&render_format(&parsed))
        .unwrap_or_else(|e| panic!("rendered {parsed:?} does not parse: {e:#}"));
    assert_eq!(again, parsed, "parse(render(x)) != x");
    for f in &parsed.fields {
        assert!(!f.name.is_empty() && !f.decl.is_empty(), "{f:?}");
    }
    if let Ok(offsets) = format::offsets(&parsed) {
        match parsed.field("group_dead") {
            Some(f) => {
                assert_eq!(f.offset, offsets.exit_group_dead);
                assert_ne!(
                    f.offset, NO_FIELD,
                    "group_dead is there but reads as absent"
                );
            }
            None => assert_eq!(offsets.exit_group_dead, NO_FIELD),
        }
    }
}

/// The kernel's BTF (`/sys/kernel/btf/vmlinux`), read at load time for
/// `task_struct.exit_code`: any bytes are a member, no member or an error, never a panic; a
/// member found is a byte offset the BTF's 32-bit bit offsets can express (its size may be
/// anything the types say, 0 too: the loader takes only 4). A blob built with a struct at the
/// input's chosen offset gives that offset back.
pub fn btf_member(data: &[u8]) {
    if let Ok(Some(m)) = btf::member(data, "task_struct", "exit_code") {
        assert!(m.offset < 1 << 29, "{m:?}");
    }
    let offset = data.get(..4).map_or(0, |b| {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % (1 << 20)
    });
    let blob = btf::build(&[("task_struct", &[("pid", 0), ("exit_code", offset)])]);
    assert_eq!(
        btf::member(&blob, "task_struct", "exit_code"),
        Ok(Some(btf::Member { offset, size: 4 }))
    );
}

/// A format text with the given fields, as the kernel writes it.
fn render_format(f: &Format) -> String {
    let mut out = format!("name: {}\nID: 1\nformat:\n", f.name);
    for field in &f.fields {
        out.push_str(&format!(
            "\tfield:{} {};\toffset:{};\tsize:{};\tsigned:0;\n",
            field.decl, field.name, field.offset, field.size
        ));
    }
    out
}

/// /proc/<pid>/stat, read by the tracker for each new process's parent
/// (`tracker::proctable::parse_stat_ppid`). The kernel writes `pid (comm) state ppid ...`; a
/// process chooses its own comm (prctl PR_SET_NAME, up to 15 bytes, 64 for some kernel
/// threads), any bytes but NUL, and may put `)`, spaces or newlines in it. With the input as the
/// comm of a kernel-shaped line, the ppid must come out as written; the input as a whole line
/// must not make the parser panic.
pub fn proc_stat(data: &[u8]) {
    let comm: Vec<u8> = data.iter().copied().filter(|b| *b != 0).take(64).collect();
    let mut line = b"4242 (".to_vec();
    line.extend_from_slice(&comm);
    line.extend_from_slice(
        b") S 17 4242 4242 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 123456 2355200 444 \
          18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
    );
    assert_eq!(parse_stat_ppid(&line), Some(17), "comm {comm:?}");
    let _ = parse_stat_ppid(data);
}

/// The state file (`--state.dir`/containers.json): whatever it holds, it parses into entries
/// that pass the checks, and those render and parse back the same.
pub fn state_file(data: &[u8]) {
    let Ok(saved) = state::parse(data) else {
        return;
    };
    for c in saved.iter().map(|c| &c.identity) {
        assert!(c.cgroup.starts_with('/') && !c.cgroup.split('/').any(|p| p == ".."));
        assert!(c.cgroup.ends_with(&format!("/{}", c.id)));
        assert!(crate::container::from_unix_seconds(c.start_time).is_some());
    }
    let again = state::parse(&state::render(&saved))
        .unwrap_or_else(|e| panic!("rendered {saved:?} does not parse: {e:#}"));
    assert_eq!(again, saved, "parse(render(x)) != x");
}

/// `--web.config.file` (exporter-toolkit YAML): any text is a config or an error, never a
/// panic; parsing never reads files (paths are resolved and read later, at load).
pub fn web_config(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let _ = WebConfig::parse(text);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every harness holds on its committed seeds (and so on the crash inputs kept there).
    #[test]
    fn seeds_hold_every_invariant() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        for (name, harness) in HARNESSES {
            let dir = seeds.join(name);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.unwrap().path())
                .collect();
            assert!(!files.is_empty(), "no seeds in {}", dir.display());
            for file in files {
                let data = std::fs::read(&file).unwrap();
                // A panic names the harness, not the file: say which.
                eprintln!("{name}: {}", file.display());
                harness(&data);
            }
        }
    }

    /// Every harness has its fuzz target, so none is forgotten by `cargo xtask fuzz`.
    #[test]
    fn every_harness_has_a_target() {
        let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
        for (name, _) in HARNESSES {
            let file = targets.join(format!("{name}.rs"));
            let source = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(
                source.contains(&format!("apptheus::fuzzing::{name}(")),
                "{} does not call its harness",
                file.display()
            );
        }
    }

    #[test]
    fn hostile_comms_keep_pid_and_ppid() {
        for comm in [
            &b""[..],
            b")",
            b") R 1 1 1",
            b"(((",
            b"a\nb",
            b"\xff\xfe)",
            b"x) S 99 ",
        ] {
            proc_stat(comm);
        }
    }
}
