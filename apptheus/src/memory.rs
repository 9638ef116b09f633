//! Giving the allocator's free memory back to the system.

/// Return the C library's free pages to the kernel. glibc keeps what was freed for reuse, and
/// once a large free has raised its mmap threshold keeps such pages for good; the daemon calls
/// this after its few large, passing needs (loading, a burst of admissions, a large page sent).
/// A no-op on other C libraries.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no memory-safety preconditions and touches no memory in use; no
    // Rust wrapper has it.
    unsafe {
        libc::malloc_trim(0);
    }
}
