//! The system allocator told to keep large freed blocks for reuse.
//!
//! Why: a training step frees and allocates hundreds of activation-sized buffers (tens to
//! hundreds of MB at batch 25). glibc serves every block above its mmap threshold (at
//! most 32 MB) with a fresh `mmap` and unmaps it on free, so each such buffer is
//! page-faulted in and zeroed by the kernel again, step after step: on the B0 adjq step
//! that took 17% of the time. With mmap off and the heap never trimmed below 2 GB, freed
//! blocks are reused. jemalloc (no decay) and mimalloc were measured too and were slower
//! here (benches/README.md).

/// Call once, first thing, before the allocations it should govern.
pub fn keep_freed_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; it is called before any
    // other thread exists and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
