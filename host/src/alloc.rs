//! The server's allocator settings. `tag-server` sets mimalloc as its global
//! allocator (in `main.rs`: a library must not choose the allocator of the
//! programs that link it, such as the end-to-end tests); this module tunes it.
//!
//! Plugins keep their own allocator (a plugin library is built on its own
//! and allocates with the system's): that is safe because only abi_stable's
//! R-types cross the boundary and each frees through the vtable of the side
//! that allocated it. `tests/allocator.rs` checks that under mimalloc.

/// mimalloc v3's `mi_option_purge_delay` (its `mi_option_e` has no Rust
/// constant for it); this build's default is 1000 ms (the header says 10).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay `tag-server` sets, in milliseconds.
pub const PURGE_DELAY_MS: std::os::raw::c_long = 100;

/// Returns freed memory to the OS after [`PURGE_DELAY_MS`] (100 ms) instead
/// of mimalloc's default 1000 ms, or at once. A run frees and allocates
/// large column buffers in quick succession: at once, every next batch
/// faulted its pages back in (kernel time); after 1000 ms, freed memory
/// stayed resident at the peak.
///
/// Measured with `tag-server run --tag-ids 1,2,3,4,5,6,7,8` (full run,
/// fresh SQLite store) under `/usr/bin/time -v perf stat -e
/// page-faults,task-clock`, a release build on the shared 2-core machine,
/// `MIMALLOC_PURGE_DELAY` set per run (a value other than a default is
/// left alone below), 2026-12-03:
///
/// | users, delay | page faults | sys s | user s | peak RSS |
/// |---|---|---|---|---|
/// | 1M, at once (0) | 142,300 | 0.56 | 0.90 | 205 MB |
/// | 1M, 100 ms | 97,800 | 0.40 | 0.82 | 246 MB |
/// | 1M, ~1000 ms (999) | 79,500 | 0.37 | 0.74 | 326 MB |
/// | 10M, at once (0) | 1,288,000 | 5.1, 6.0 | 9.4, 10.2 | 1751 MB |
/// | 10M, 100 ms | 991,000, 938,000 | 6.1, 6.3 | 10.2, 10.8 | 1790, 1872 MB |
///
/// 1M rows are medians of 7 alternating runs; 10M, two runs each (sys time
/// there varied by more than the difference). 100 ms cuts a third of the
/// page faults and of the kernel time at 1M for 40 MB more at the peak;
/// 1000 ms gains little more and costs 120 MB at 1M and, earlier, 0.5 GB at
/// 10M (2.2 GiB against 1.7 GiB). Also tried at 1M: 10 ms (as at once),
/// 50 ms (103,000 faults, 228 MB), `MIMALLOC_ARENA_PURGE_MULT=1` (no
/// change), `MIMALLOC_PURGE_DECOMMITS=0` (80,000 faults but 331 MB: reset
/// pages stay resident) and `MIMALLOC_ALLOW_THP=1` (no change).
///
/// The option is only set if it reads as one of the known defaults, so a
/// renumbered enum in another mimalloc, or a `MIMALLOC_PURGE_DELAY` given
/// in the environment, is left alone. Call it first thing in `main`, before
/// the first large allocation.
pub fn purge_freed_memory_soon() {
    // SAFETY: plain calls into the allocator's option table.
    unsafe {
        if matches!(
            libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
            10 | 1000
        ) {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}
