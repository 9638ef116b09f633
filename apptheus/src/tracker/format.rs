//! Parser of tracefs event format files (`/sys/kernel/tracing/events/<cat>/<event>/format`).
//!
//! Tracepoint layouts change between kernels (6.x has `__data_loc` comms and `group_dead` in
//! `sched_process_exit`, 5.x has `char comm[16]`), so the eBPF programs get their field offsets
//! from this parser at load time instead of from constants.
use anyhow::{Context as _, Result, bail};

use apptheus_common::{NO_FIELD, TracepointOffsets};

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration without the name, e.g. `pid_t`, `char[16]`, `__data_loc char[]`.
    pub decl: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of one event, in the file's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub fields: Vec<Field>,
}

impl Format {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The offset of a field that must be there with the given size.
    pub fn require(&self, name: &str, size: u32) -> Result<u32> {
        let f = self
            .field(name)
            .with_context(|| format!("tracepoint {} has no field `{name}`", self.name))?;
        if f.size != size {
            bail!(
                "tracepoint {} field `{name}` has size {}, expected {size}",
                self.name,
                f.size
            );
        }
        Ok(f.offset)
    }
}

/// Parse the text of a format file.
pub fn parse(text: &str) -> Result<Format> {
    let mut name = None;
    let mut fields = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("name:") {
            name = Some(v.trim().to_string());
        } else if line.starts_with("field:") {
            fields.push(
                parse_field(line).with_context(|| format!("format line {}: {line:?}", n + 1))?,
            );
        }
    }
    let name = name.context("format text has no `name:` line")?;
    if fields.is_empty() {
        bail!("format of {name} has no fields");
    }
    Ok(Format { name, fields })
}

/// `field:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;`
fn parse_field(line: &str) -> Result<Field> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':').context("expected `key:value`")?;
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = Some(value.trim().parse::<u32>().context("bad offset")?),
            "size" => size = Some(value.trim().parse::<u32>().context("bad size")?),
            _ => {}
        }
    }
    let decl = decl.context("no field declaration")?;
    let (ty, name) = split_decl(decl).context("field declaration without a name")?;
    let offset = offset.context("no offset")?;
    let size = size.context("no size")?;
    // A record's fixed fields lie within 64 KiB (`__data_loc` fields address the record with
    // 16-bit offsets). Refusing more also keeps every offset below NO_FIELD (u32::MAX), which
    // would otherwise read as "no such field".
    if offset
        .checked_add(size)
        .is_none_or(|end| end > MAX_RECORD_SIZE)
    {
        bail!("field `{name}` ends past {MAX_RECORD_SIZE} bytes (offset {offset}, size {size})");
    }
    Ok(Field {
        name,
        decl: ty,
        offset,
        size,
    })
}

/// Where a tracepoint record's fixed fields end at the latest.
const MAX_RECORD_SIZE: u32 = 1 << 16;

/// `char comm[16]` -> (`char[16]`, `comm`); `__data_loc char[] filename` -> (`__data_loc char[]`, `filename`).
fn split_decl(decl: &str) -> Option<(String, String)> {
    let (ty, last) = decl.rsplit_once(char::is_whitespace)?;
    let (name, array) = match last.find('[') {
        Some(i) => (&last[..i], &last[i..]),
        None => (last, ""),
    };
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    name_ok.then(|| (format!("{}{array}", ty.trim()), name.to_string()))
}

/// The offsets the eBPF programs need from the exit event's format text.
pub fn offsets(exit: &Format) -> Result<TracepointOffsets> {
    Ok(TracepointOffsets {
        exit_group_dead: match exit.field("group_dead") {
            Some(f) if f.size == 1 => f.offset,
            Some(f) => bail!(
                "sched_process_exit field `group_dead` has size {}, expected 1",
                f.size
            ),
            None => NO_FIELD,
        },
        // Not from this format: `tracefs::read_offsets` fills them where the kernel has them.
        task_tgid: NO_FIELD,
        task_start_time: NO_FIELD,
        mark_victim_pid: NO_FIELD,
        task_exit_code: NO_FIELD,
        task_signal: NO_FIELD,
        signal_live: NO_FIELD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(kernel: &str, event: &str) -> Format {
        let path = format!(
            "{}/src/tracker/fixtures/{kernel}-{event}.format",
            env!("CARGO_MANIFEST_DIR")
        );
        parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn offsets_of(kernel: &str) -> TracepointOffsets {
        offsets(&fixture(kernel, "sched_process_exit")).unwrap()
    }

    #[test]
    fn kernel_6_layout() {
        let fork = fixture("6.18", "sched_process_fork");
        assert_eq!(fork.name, "sched_process_fork");
        let comm = fork.field("parent_comm").unwrap();
        assert_eq!(
            (comm.decl.as_str(), comm.offset, comm.size),
            ("__data_loc char[]", 8, 4)
        );
        assert_eq!(fork.field("parent_pid").unwrap().offset, 12);
        assert_eq!(
            offsets_of("6.18"),
            TracepointOffsets {
                exit_group_dead: 32,
                ..TracepointOffsets::UNSET
            }
        );
    }

    #[test]
    fn kernel_5_layout() {
        let fork = fixture("5.15", "sched_process_fork");
        let comm = fork.field("child_comm").unwrap();
        assert_eq!(
            (comm.decl.as_str(), comm.offset, comm.size),
            ("char[16]", 28, 16)
        );
        assert_eq!(
            offsets_of("5.15"),
            TracepointOffsets {
                exit_group_dead: NO_FIELD,
                ..TracepointOffsets::UNSET
            }
        );
    }

    #[test]
    fn common_fields_are_parsed() {
        let exec = fixture("6.18", "sched_process_exec");
        assert_eq!(exec.fields.len(), 7);
        assert_eq!(exec.field("common_pid").unwrap().decl, "int");
        assert_eq!(exec.field("old_pid").unwrap().offset, 16);
    }

    #[test]
    fn malformed_texts_are_errors() {
        for (text, want) in [
            ("", "no `name:`"),
            ("name: x\nformat:\n", "no fields"),
            (
                "name: x\n\tfield:int a;\toffset:zz;\tsize:4;\n",
                "bad offset",
            ),
            ("name: x\n\tfield:int a;\tsize:4;\n", "no offset"),
            (
                "name: x\n\tfield:int;\toffset:0;\tsize:4;\n",
                "without a name",
            ),
            ("name: x\n\tfield:int a;\toffset:0;\tsize:-1;\n", "bad size"),
            ("name: x\n\tfield:int a;\toffset 0;\n", "key:value"),
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn missing_or_resized_fields_are_errors() {
        let fork =
            parse("name: sched_process_fork\n\tfield:pid_t child_pid;\toffset:20;\tsize:8;\n")
                .unwrap();
        let err = fork.require("child_pid", 4).unwrap_err().to_string();
        assert!(err.contains("size 8"), "{err}");
        let err = fork.require("parent_pid", 4).unwrap_err().to_string();
        assert!(err.contains("no field `parent_pid`"), "{err}");
    }

    /// Broke an invariant of the `tracefs_format` fuzz harness: a `group_dead` at offset
    /// u32::MAX was handed to eBPF as NO_FIELD, "absent", without an error.
    #[test]
    fn fields_past_a_record_are_errors() {
        let text = "name: sched_process_exit\nformat:\n\
            \tfield:pid_t pid;\toffset:8;\tsize:4;\n\
            \tfield:u64 clone_flags;\toffset:16;\tsize:8;\n\
            \tfield:pid_t child_pid;\toffset:24;\tsize:4;\n\
            \tfield:bool group_dead;\toffset:4294967295;\tsize:1;\n";
        let err = format!("{:#}", parse(text).unwrap_err());
        assert!(err.contains("`group_dead` ends past 65536 bytes"), "{err}");
        for (offset, size) in [("65535", "2"), ("4294967295", "1"), ("1", "4294967295")] {
            let text = format!("name: x\n\tfield:int a;\toffset:{offset};\tsize:{size};\n");
            assert!(parse(&text).is_err(), "{text}");
        }
        let last = parse("name: x\n\tfield:char a[8];\toffset:65528;\tsize:8;\n").unwrap();
        assert_eq!(last.fields[0].offset, 65528);
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "\u{0}\u{1}",
            "field:",
            "name:\nfield:;;;;",
            "name: a\nfield:x y[;offset:1;size:1",
            "field:a b;offset:99999999999;size:1;",
        ] {
            let _ = parse(text);
        }
    }
}
