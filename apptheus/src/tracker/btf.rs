//! Offsets of kernel struct fields from the kernel's BTF (`/sys/kernel/btf/vmlinux`), read at
//! load time as the tracepoints' formats are: `struct task_struct` is laid out differently by
//! every kernel build, and the programs read a field of it that no tracepoint carries (the exit
//! code). aya-obj parses BTF but keeps struct members private, so this is a small parser of its
//! own: bounded (every length is checked against the data, nothing is allocated from a length
//! field), and a fuzz target (`btf`) holds it to that.
//!
//! The format (include/uapi/linux/btf.h): a header, a type section and a string section. Each
//! type is a `btf_type` (name offset, info, size or type) followed by data whose length its
//! kind fixes; types are numbered from 1 in order.

/// Where a member lies in its struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the struct.
    pub offset: u32,
    /// Size in bytes of the member's type, typedefs and qualifiers resolved.
    pub size: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF: {0}")]
    Format(&'static str),
    #[error("BTF type {0} is not understood (kind {1})")]
    Kind(u32, u32),
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

// Kinds (BTF_KIND_*).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// The `btf_type` at `at` in the type section (its data starts right after it).
fn decode(section: &[u8], at: usize) -> Option<Type> {
    let word = |i: usize| u32_at(section, at.checked_add(4 * i)?);
    let (name_off, info, size_or_type) = (word(0)?, word(1)?, word(2)?);
    let start = at.checked_add(12)?;
    Some(Type {
        name_off,
        kind: (info >> 24) & 0x1f,
        vlen: info & 0xffff,
        kind_flag: info >> 31 != 0,
        size_or_type,
        data: start,
    })
}

/// One type's fixed part and where its kind-specific data lies.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Where the data after the `btf_type` starts in the type section.
    data: usize,
}

struct Btf<'a> {
    /// Where each type starts in the type section (type id - 1 -> offset): 4 bytes a type,
    /// where a decoded `Type` would be 40 (a kernel has some 100,000 types).
    starts: Vec<u32>,
    type_section: &'a [u8],
    strings: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Btf<'a>, BtfError> {
        let bad = BtfError::Format;
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(bad("wrong magic (or not little-endian)"));
        }
        let field = |at| u32_at(data, at).ok_or(bad("short header"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        if hdr_len < HEADER_LEN {
            return Err(bad("header too short"));
        }
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let type_section = section(type_off, type_len).ok_or(bad("type section out of bounds"))?;
        let strings = section(str_off, str_len).ok_or(bad("string section out of bounds"))?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < type_section.len() {
            let t = decode(type_section, at).ok_or(bad("truncated type"))?;
            let (kind, vlen) = (t.kind, t.vlen);
            let per_item = match kind {
                INT | VAR | DECL_TAG => 4,
                PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
                ARRAY => 12,
                STRUCT | UNION | DATASEC | ENUM64 => 12,
                ENUM | FUNC_PROTO => 8,
                _ => return Err(BtfError::Kind(starts.len() as u32 + 1, kind)),
            };
            // INT, VAR and DECL_TAG carry one 4-byte word, ARRAY one 12-byte record; the
            // others one record per item.
            let extra = match kind {
                INT | VAR | DECL_TAG | ARRAY => per_item,
                _ => per_item * vlen as usize,
            };
            let end = t
                .data
                .checked_add(extra)
                .filter(|&e| e <= type_section.len())
                .ok_or(bad("truncated type data"))?;
            starts.push(u32::try_from(at).map_err(|_| bad("type section too large"))?);
            at = end;
        }
        Ok(Btf {
            starts,
            type_section,
            strings,
        })
    }

    fn name(&self, off: u32) -> Option<&'a [u8]> {
        let rest = self.strings.get(off as usize..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..len])
    }

    fn get(&self, id: u32) -> Option<Type> {
        let at = *self.starts.get((id as usize).checked_sub(1)?)?;
        decode(self.type_section, at as usize)
    }

    /// Every type, in order.
    fn types(&self) -> impl Iterator<Item = Type> + '_ {
        self.starts
            .iter()
            .filter_map(|&at| decode(self.type_section, at as usize))
    }

    /// The size of type `id`, following typedefs and qualifiers (a bounded number of steps).
    fn size_of(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT | DATASEC => {
                    return Some(t.size_or_type);
                }
                PTR => return Some(8),
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return None,
            }
        }
        None
    }
}

/// The member `member` of `struct name` (the first complete struct of that name), or None when
/// the kernel has no such struct or member. A bitfield member is None too: the programs read
/// whole bytes.
pub fn member(data: &[u8], name: &str, member: &str) -> Result<Option<Member>, BtfError> {
    let btf = Btf::parse(data)?;
    for t in btf.types() {
        if t.kind != STRUCT || btf.name(t.name_off) != Some(name.as_bytes()) {
            continue;
        }
        for i in 0..t.vlen as usize {
            let at = t.data + 12 * i;
            let (Some(m_name), Some(m_type), Some(m_off)) = (
                u32_at(btf.type_section, at),
                u32_at(btf.type_section, at + 4),
                u32_at(btf.type_section, at + 8),
            ) else {
                return Err(BtfError::Format("truncated member"));
            };
            if btf.name(m_name) != Some(member.as_bytes()) {
                continue;
            }
            // With kind_flag the offset word holds the bitfield size in its top byte.
            let (bits, bit_off) = if t.kind_flag {
                (m_off >> 24, m_off & 0x00ff_ffff)
            } else {
                (0, m_off)
            };
            let Some(size) = btf.size_of(m_type) else {
                return Ok(None);
            };
            if bits != 0 || bit_off % 8 != 0 {
                return Ok(None);
            }
            return Ok(Some(Member {
                offset: bit_off / 8,
                size,
            }));
        }
        return Ok(None);
    }
    Ok(None)
}

/// A BTF blob with the given types, for tests and fuzz seeds: `structs` are (name, members),
/// each member (name, byte offset) of type `int` (4 bytes) behind a typedef.
#[cfg(any(test, feature = "fuzzing"))]
pub fn build(structs: &[(&str, &[(&str, u32)])]) -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut add = |s: &str| {
        let off = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        off
    };
    let mut types = Vec::new();
    let push = |types: &mut Vec<u8>, words: &[u32]| {
        for w in words {
            types.extend_from_slice(&w.to_le_bytes());
        }
    };
    // 1: int (4 bytes, signed), 2: typedef pid_t -> 1.
    let int = add("int");
    push(&mut types, &[int, INT << 24, 4, (1 << 24) | 32]);
    let pid_t = add("pid_t");
    push(&mut types, &[pid_t, TYPEDEF << 24, 1]);
    for (name, members) in structs {
        let n = add(name);
        let size = members.iter().map(|m| m.1 + 4).max().unwrap_or(0);
        push(
            &mut types,
            &[n, (STRUCT << 24) | members.len() as u32, size],
        );
        for (m, off) in members.iter() {
            let mn = add(m);
            push(&mut types, &[mn, 2, off * 8]);
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[1, 0]); // version, flags
    for w in [
        HEADER_LEN as u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&types);
    out.extend_from_slice(&strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_member_behind_a_typedef() {
        let blob = build(&[
            ("mm_struct", &[("exit_code", 0)]),
            ("task_struct", &[("pid", 8), ("exit_code", 1600)]),
        ]);
        assert_eq!(
            member(&blob, "task_struct", "exit_code"),
            Ok(Some(Member {
                offset: 1600,
                size: 4
            }))
        );
        assert_eq!(member(&blob, "task_struct", "exit_state"), Ok(None));
        assert_eq!(member(&blob, "signal_struct", "flags"), Ok(None));
    }

    #[test]
    fn this_kernels_task_struct_has_an_int_exit_code() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            panic!("/sys/kernel/btf/vmlinux is missing: this kernel has no BTF");
        };
        let m = member(&data, "task_struct", "exit_code").unwrap().unwrap();
        assert_eq!(m.size, 4);
        assert!(m.offset > 0);
    }

    /// What the exit hook reads where the exit tracepoint has no `group_dead`: the task's
    /// `signal` pointer and its `live` count (an `atomic_t`: a struct of one int).
    #[test]
    fn this_kernels_thread_group_has_a_live_count() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
        let signal = member(&data, "task_struct", "signal").unwrap().unwrap();
        assert_eq!(signal.size, 8);
        let live = member(&data, "signal_struct", "live").unwrap().unwrap();
        assert_eq!(live.size, 4);
    }

    /// Found by the fuzzer: a member whose type resolves to a size of 0 is a member of size 0
    /// (which the loader refuses: it wants 4), not a broken parse.
    #[test]
    fn a_zero_sized_member_is_reported_as_it_is() {
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/seeds/btf_member/regression-zero-size-member.btf"
        ))
        .unwrap();
        let m = member(&data, "task_struct", "exit_code").unwrap();
        assert!(m.is_some_and(|m| m.size == 0), "{m:?}");
    }

    #[test]
    fn truncated_and_corrupt_blobs_are_errors() {
        let blob = build(&[("task_struct", &[("exit_code", 16)])]);
        for n in 0..blob.len() {
            // Never a panic; a cut inside the sections is an error or, cut in the strings, no
            // match.
            let _ = member(&blob[..n], "task_struct", "exit_code");
        }
        let mut bad = blob.clone();
        bad[0] = 0;
        assert!(member(&bad, "task_struct", "exit_code").is_err());
        let mut huge = blob.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(member(&huge, "task_struct", "exit_code").is_err());
    }
}
