//! How a Lambda process takes memory from the kernel.
//!
//! mimalloc (the `lambda` binary's allocator) asks for transparent huge
//! pages on its arenas. The first touch of each 2 MiB region then makes the
//! kernel zero all of it at once, and every region mimalloc gives back
//! (it purges freed memory after a few milliseconds) is zeroed again when
//! it is reused. A Lambda process allocates and frees constantly: fetch
//! responses, micro-batches, view files, the embedded broker's buffers. In
//! the speed-layer bench `perf` put 42 % of the speed phase's samples in
//! the kernel zeroing huge pages (`clear_page_erms` under
//! `do_huge_pmd_anonymous_page`), and without them the speed layer ran
//! 18–27 % faster (README, "Speed layer vs a plain consumer"). Databases that
//! churn memory advise the same (Redis, MongoDB, PostgreSQL): the process
//! turns transparent huge pages off for itself, unless the user chose
//! otherwise with mimalloc's own switch, `MIMALLOC_ALLOW_THP`.

/// mimalloc's switch: set to anything, it decides (`0` turns huge pages off,
/// `1` keeps them) and this module leaves the process alone.
pub const ALLOW_THP_VAR: &str = "MIMALLOC_ALLOW_THP";

/// What [`avoid_transparent_huge_pages`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HugePages {
    /// Turned off for this process (and the processes it starts).
    TurnedOff,
    /// Left as they are: `MIMALLOC_ALLOW_THP` is set to this value.
    LeftToMimalloc(String),
    /// Not a Linux system: nothing to turn off.
    NotLinux,
}

/// Turns transparent huge pages off for this process unless
/// `MIMALLOC_ALLOW_THP` is set. Call it first thing in `main`; it applies
/// to memory already mapped too. A kernel that refuses is reported as an
/// error: the process works either way, only slower.
pub fn avoid_transparent_huge_pages() -> std::io::Result<HugePages> {
    if let Some(value) = std::env::var_os(ALLOW_THP_VAR) {
        return Ok(HugePages::LeftToMimalloc(
            value.to_string_lossy().into_owned(),
        ));
    }
    #[cfg(target_os = "linux")]
    {
        rustix::thread::disable_transparent_huge_pages(true)?;
        Ok(HugePages::TurnedOff)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(HugePages::NotLinux)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // nextest runs every test in a process of its own, so turning huge
    // pages off here does not change another test's process.
    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_are_turned_off_for_the_process_unless_mimalloc_is_told() {
        let outcome = avoid_transparent_huge_pages().expect("prctl");
        match std::env::var(ALLOW_THP_VAR) {
            Ok(value) => assert_eq!(outcome, HugePages::LeftToMimalloc(value)),
            Err(_) => {
                assert_eq!(outcome, HugePages::TurnedOff);
                let off = rustix::thread::transparent_huge_pages_are_disabled().expect("prctl");
                assert!(off, "the kernel still gives this process huge pages");
            }
        }
    }
}
