//! The tracked-process map (tgid -> container key) and its bitmap, kept in step.
//!
//! The programs run for every task on the host; an untracked task costs them one read of its
//! bit in `TRACKED_PIDS` (see the eBPF crate). So every entry added here sets its tgid's bit
//! (after the insert: the programs look at the map only when the bit is set), and every entry
//! removed clears it (after the removal). The bitmap is an mmap'able array that this side
//! maps and changes with atomic or/and; the programs change bits with atomic adds.
use std::{
    num::NonZeroUsize,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use apptheus_common::PID_BITS_PER_WORD;
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, MapIter};

/// Words of the bitmap for this host's pid_max (a tgid is below it).
pub(super) fn bitmap_words() -> u32 {
    // PID_MAX_LIMIT on 64-bit kernels; pid_max can be raised up to it at any time, and a tgid
    // past the bitmap only costs the programs the hash lookup.
    const PID_MAX_LIMIT: u32 = 1 << 22;
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(PID_MAX_LIMIT)
        .clamp(PID_BITS_PER_WORD, PID_MAX_LIMIT);
    pid_max.div_ceil(PID_BITS_PER_WORD)
}

/// `TRACKED` with `TRACKED_PIDS`: the map's operations that the tracker uses, each keeping the
/// bitmap in step.
pub(super) struct TrackedMap {
    map: BpfHashMap<MapData, u32, u64>,
    bits: PidBits,
}

impl TrackedMap {
    pub(super) fn new(map: BpfHashMap<MapData, u32, u64>, bits: PidBits) -> TrackedMap {
        TrackedMap { map, bits }
    }

    pub(super) fn insert(&mut self, pid: u32, key: u64, flags: u64) -> Result<(), MapError> {
        self.map.insert(pid, key, flags)?;
        self.bits.set(pid);
        Ok(())
    }

    pub(super) fn remove(&mut self, pid: &u32) -> Result<(), MapError> {
        self.map.remove(pid)?;
        self.bits.clear(*pid);
        Ok(())
    }

    pub(super) fn get(&self, pid: &u32, flags: u64) -> Result<u64, MapError> {
        self.map.get(pid, flags)
    }

    pub(super) fn iter(&self) -> MapIter<'_, u32, u64, BpfHashMap<MapData, u32, u64>> {
        self.map.iter()
    }
}

/// The bitmap `TRACKED_PIDS`, mapped into this process.
pub(super) struct PidBits {
    words: NonNull<AtomicU64>,
    len: usize,
    // Owns the map's fd; the mapping stays valid after it closes, but the map is kept whole.
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives as long as self.
unsafe impl Send for PidBits {}
// SAFETY: as above.
unsafe impl Sync for PidBits {}

impl PidBits {
    /// Map the array `map` (created `BPF_F_MMAPABLE`, `words` entries of u64) read-write.
    pub(super) fn map(map: MapData, words: u32) -> std::io::Result<PidBits> {
        let len = words as usize;
        let bytes = NonZeroUsize::new(len * size_of::<u64>())
            .ok_or_else(|| std::io::Error::other("an empty pid bitmap"))?;
        // SAFETY: aya has no mmap of maps, nix's is unsafe: a fresh shared mapping of the map's
        // fd (no other Rust object aliases it), no larger than the array; unmapped in Drop.
        let addr = unsafe {
            nix::sys::mman::mmap(
                None,
                bytes,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                map.fd(),
                0,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(PidBits {
            words: addr.cast(),
            len,
            _map: map,
        })
    }

    fn word(&self, pid: u32) -> Option<(&AtomicU64, u64)> {
        let index = (pid / PID_BITS_PER_WORD) as usize;
        if index >= self.len {
            return None;
        }
        // SAFETY: `index` is within the mapping, which holds `len` u64 words (page-aligned, so
        // aligned for AtomicU64) for as long as self lives; all access to it is atomic.
        let word = unsafe { self.words.add(index).as_ref() };
        Some((word, 1 << (pid % PID_BITS_PER_WORD)))
    }

    fn set(&self, pid: u32) {
        if let Some((w, bit)) = self.word(pid) {
            w.fetch_or(bit, Ordering::SeqCst);
        }
    }

    fn clear(&self, pid: u32) {
        if let Some((w, bit)) = self.word(pid) {
            w.fetch_and(!bit, Ordering::SeqCst);
        }
    }
}

impl Drop for PidBits {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length; nothing refers to it after self.
        let _ = unsafe { nix::sys::mman::munmap(self.words.cast(), self.len * size_of::<u64>()) };
    }
}
