//! Every entry of a hash map in a few syscalls (`BPF_MAP_LOOKUP_BATCH`, 5.6+), for the sampler's
//! pass, which wants the counters of every container: one lookup per container was one syscall
//! per container per pass. aya 0.14 has no batch operation, so this calls bpf(2) itself.
use std::{io, os::fd::AsRawFd as _};

use aya::{Pod, maps::MapData};

/// `BPF_MAP_LOOKUP_BATCH` (<linux/bpf.h>).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The batch operations' part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries read per syscall: a hash map returns whole buckets (a few entries each), so any
/// chunk holds one; 1,024 keeps the buffers small (about 120 KiB for the counters).
const CHUNK: usize = 1024;

/// All (key, value) pairs of the hash map `map`, whose capacity is `capacity`, `CHUNK` at a
/// time (one syscall for up to about that many containers).
pub(super) fn lookup_all<K: Pod + Default, V: Pod + Default>(
    map: &MapData,
    capacity: usize,
) -> io::Result<Vec<(K, V)>> {
    let chunk = capacity.clamp(1, CHUNK);
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // The position between calls: a bucket index for hash maps (a u32), opaque to us.
    let mut token = [0u64; 1];
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.fd().as_fd_raw(),
            ..BatchAttr::default()
        };
        // SAFETY: bpf(2) with BPF_MAP_LOOKUP_BATCH reads `attr` and writes at most `count` keys
        // and values into buffers of that many elements of the map's key and value types (the
        // caller's K and V, as aya's typed map checked), and one token of at most 8 bytes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(chunk);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None => first = false,
            // ENOENT: the end of the map (with the last entries, if any, in this chunk).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
    }
}

/// A map fd as bpf(2) takes it.
trait AsFdRaw {
    fn as_fd_raw(&self) -> u32;
}

impl AsFdRaw for aya::maps::MapFd {
    fn as_fd_raw(&self) -> u32 {
        use std::os::fd::AsFd as _;
        self.as_fd().as_raw_fd() as u32
    }
}
