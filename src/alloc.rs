//! The allocator's settings. The binary (and the benchmarks) use mimalloc as the global
//! allocator: planning and sled's copy-on-write pages allocate and free small blocks at a
//! high rate, and glibc's malloc took about a third of the CPU of a round
//! (docs/benchmarks.md).

/// mimalloc's option numbers (`mi_option_e` in mimalloc 3's `mimalloc.h`).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Hands freed memory back to the OS at once and commits arena memory only when used: the
/// daemon's peak RSS is a documented budget (docs/benchmarks.md), and a round frees most
/// of what it allocated. Call first thing in `main`; harmless under another allocator.
pub fn tune() {
    // SAFETY: plain option setters with valid option numbers; they only store a value.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
    }
}
