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

/// Returns freed memory to the OS at once instead of after a delay: a run
/// frees and allocates large column buffers in quick succession, and at 10M
/// users the delay left about 0.5 GB of freed memory resident at the peak
/// (2.2 GiB against 1.7 GiB). The option is only set if it reads as one of
/// the known defaults, so a renumbered enum in another mimalloc is left alone.
/// Call it first thing in `main`, before the first large allocation.
pub fn purge_freed_memory_at_once() {
    // SAFETY: plain calls into the allocator's option table.
    unsafe {
        if matches!(
            libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
            10 | 1000
        ) {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}
