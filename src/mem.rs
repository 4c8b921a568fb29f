//! Allocator settings, the one place in the crate with `unsafe` (two libc calls).
//!
//! glibc's malloc gives threads their own arenas (up to 8 per core) and keeps freed memory
//! in each: with thousands of streams whose responses are built and freed on whichever
//! worker runs them, that was ~650 kB of RSS per connected proxy (measured with
//! `pilotfish-load` at 300 proxies: 726 kB/proxy with default arenas, 49 kB with one;
//! mimalloc was worse still). So: one arena, and free memory handed back now and then. (Two
//! arenas measured the same CPU under churn at 2,000 proxies and kept ~10–30 MB more after
//! it; one arena's lock is not contended on this machine's two cores.)
#![allow(unsafe_code)]

/// Limit malloc arenas. Call before the runtime starts its threads.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // exist, and M_ARENA_MAX takes any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Return free heap memory to the kernel (after pushes freed their buffers).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread safe and only releases memory that is already free.
    unsafe {
        libc::malloc_trim(0);
    }
}
