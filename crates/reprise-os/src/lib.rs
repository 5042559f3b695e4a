//! Process and thread settings the standard library does not offer, for the capture proxy's
//! forwarding path to keep its latency while recording runs beside it:
//!
//! - [`lower_this_thread`]: a recording thread steps aside for forwarding, by scheduling
//!   class (Linux `SCHED_IDLE`) or by nice value with the shortest time slice.
//! - [`keep_freed_memory`]: the allocators (mimalloc, the binaries' global allocator, and
//!   glibc's `malloc`, the C libraries') keep the pages they free instead of handing them
//!   back to the system.
//!
//! This is the one crate of the workspace with `unsafe` code, at five foreign functions
//! (`sched_setscheduler`, `sched_setattr`, `setpriority`, `mi_option_set`, `mallopt`), each
//! call with its safety argument; every other crate forbids it. Both functions are best effort:
//! they report what they could not do and change nothing else.

use std::fmt;

/// How far a thread steps aside for the others of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Linux's `SCHED_IDLE`: the thread runs only on CPU time no ordinary thread wants, and
    /// any ordinary thread woken on its CPU takes the CPU at once. On a CPU kept busy by
    /// other work it barely runs.
    Idle,
    /// An ordinary thread at this nice value (0 to 19): a smaller share of a busy CPU. It
    /// also asks for the shortest time slice the kernel grants (0.1 ms; Linux 6.12 and
    /// later, older kernels ignore it): a thread woken on its CPU (the forwarding thread)
    /// then waits at most that long for it, where the default slice (0.7-3 ms) protected
    /// the running thread that long. Its share of the CPU stays what the nice value gives.
    Nice(i32),
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Priority::Idle => f.write_str("SCHED_IDLE"),
            Priority::Nice(n) => write!(f, "nice {n}"),
        }
    }
}

/// Lowers the calling thread's scheduling priority (per thread on Linux); an error says why
/// it stayed as it was (a nice value out of 0..=19 is refused everywhere; on other systems
/// nothing else is done).
///
/// A thread can lower itself this way without privileges, but not raise itself back: call
/// it once, at the start of a thread whose whole work is of lower priority.
pub fn lower_this_thread(priority: Priority) -> std::io::Result<()> {
    if let Priority::Nice(n) = priority
        && !(0..=19).contains(&n)
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("nice value {n} is not in 0..=19"),
        ));
    }
    #[cfg(target_os = "linux")]
    {
        let rc = match priority {
            Priority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: `sched_setscheduler` reads the `sched_param` behind the pointer,
                // which is alive and initialised for the call; pid 0 is the calling thread.
                #[allow(unsafe_code, reason = "the one foreign call that sets SCHED_IDLE")]
                unsafe {
                    libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
                }
            }
            Priority::Nice(n) => {
                let attr = libc::sched_attr {
                    size: std::mem::size_of::<libc::sched_attr>() as u32,
                    sched_policy: libc::SCHED_OTHER as u32,
                    sched_flags: 0,
                    sched_nice: n,
                    sched_priority: 0,
                    sched_runtime: SHORTEST_SLICE_NS,
                    sched_deadline: 0,
                    sched_period: 0,
                };
                // SAFETY: `sched_setattr` reads `size` bytes of the `sched_attr` behind the
                // pointer, which is alive, initialised and exactly that size for the call;
                // pid 0 is the calling thread, flags 0.
                #[allow(unsafe_code, reason = "sched_setattr has no wrapper in libc or std")]
                let set = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
                if set == 0 {
                    0
                } else {
                    // Kernels before 3.14, or a sandbox that refuses the call: the nice value
                    // alone.
                    // SAFETY: `setpriority` takes plain integers; `who` 0 is the calling
                    // thread (Linux keeps nice values per thread).
                    #[allow(unsafe_code, reason = "setpriority has no safe wrapper in std")]
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, 0, n)
                    }
                }
            }
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = priority;
        Ok(())
    }
}

/// The shortest time slice Linux grants a fair-class thread (`sched_attr.sched_runtime`,
/// clamped by the kernel to 0.1-100 ms).
#[cfg(target_os = "linux")]
const SHORTEST_SLICE_NS: u64 = 100_000;

/// mimalloc's option number for its purge delay (`mi_option_purge_delay` in the v3 header
/// of the vendored mimalloc, `libmimalloc-sys` 0.1.49; that crate names no constant for it).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

#[allow(unsafe_code, reason = "mimalloc's C API, linked by libmimalloc-sys")]
unsafe extern "C" {
    /// mimalloc's `void mi_option_set(mi_option_t option, long value)`.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Tells both allocators of the process to keep the memory they free mapped for the life of
/// the process rather than give it back to the system:
///
/// - mimalloc (the binaries' global allocator: Rust's allocations): purge delay -1, where
///   v3's default gives pages back a second after they fell free. It takes effect only where
///   mimalloc is the global allocator (elsewhere it sets an option nothing reads).
/// - glibc's `malloc` (the C libraries': zstd's contexts in the Parquet writer), on
///   GNU/Linux: blocks up to 32 MiB come from its heaps rather than from a mapping of their
///   own (`M_MMAP_THRESHOLD`), and a heap's free top is kept up to 1 GiB (`M_TRIM_THRESHOLD`)
///   rather than 128 KiB.
///
/// Call it first thing in `main`, before threads start.
///
/// Why: in the capture proxy the forwarding thread allocates each exchange and a recording
/// thread frees it. mimalloc then purged the pages so freed and later handed them out again,
/// so that the forwarding thread page-faulted on them: 1,850 faults in 30,000 proxied
/// requests, against 52 with this set (docs/record.md). And the recording writer, which opens
/// a Parquet part each second with a zstd compressor and decompressor per column (glibc
/// allocations of 0.1-1 MiB), had its heap shrunk after each part and faulted the same
/// pages in again: 1,890 faults a 5-second bench run, against 397 with glibc told too, on a
/// virtual machine where a fault costs tens of µs. The cost is a resident size that stays
/// at its high-water mark, as nginx's does.
pub fn keep_freed_memory() {
    keep_c_heap();
    // Keeps libmimalloc-sys, which builds and links the C library, in the link.
    use libmimalloc_sys as _;
    // SAFETY: `mi_option_set` takes plain integers and only stores the value in mimalloc's
    // option table (an atomic store); 15 is `mi_option_purge_delay` in the linked version
    // and -1 a documented value for it ("no purging at all").
    #[allow(unsafe_code, reason = "mimalloc's options are set through its C API")]
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    }
}

/// glibc's `malloc` keeps what is freed: see [`keep_freed_memory`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_c_heap() {
    // SAFETY: `mallopt` takes two integers and only sets malloc's tunables (under malloc's
    // own lock); both parameters are documented ones and both values in their ranges (the
    // mmap threshold at most HEAP_MAX_SIZE / 2, 32 MiB on 64-bit systems).
    #[allow(
        unsafe_code,
        reason = "glibc's malloc tunables are set through mallopt"
    )]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, C_HEAP_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Other C libraries (musl, macOS): nothing to set.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_c_heap() {}

/// Blocks below this many bytes come from glibc's heaps (its maximum on 64-bit systems).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const C_HEAP_MMAP_THRESHOLD: std::ffi::c_int = 32 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread lowers itself by nice value, and the kernel reports the new value and, where
    /// it shows slices, the shortest one.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_lowers_its_nice_value() {
        std::thread::spawn(|| {
            lower_this_thread(Priority::Nice(7)).expect("lowered");
            assert_eq!(stat_field(19), 7, "nice");
            // Kernels that take a thread's slice from it (6.12 and later) show the short one.
            let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default();
            let line = sched.lines().find(|l| l.starts_with("se.slice "));
            if let Some(line) = line.filter(|_| kernel_at_least(6, 12)) {
                let slice: u64 = line
                    .rsplit(':')
                    .next()
                    .and_then(|v| v.trim().parse().ok())
                    .expect("se.slice value");
                assert_eq!(slice, SHORTEST_SLICE_NS, "{line}");
            }
        })
        .join()
        .expect("thread");
    }

    /// Field `n` (counted from 1, as in proc(5)) of the calling thread's
    /// `/proc/thread-self/stat`, as a number.
    #[cfg(target_os = "linux")]
    fn stat_field(n: usize) -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // The command name (field 2) may hold spaces: the fields from 3 on follow its ')'.
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(n - 3))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("field {n} of {stat:?}"))
    }

    /// Whether the running kernel's release is at least `major.minor`.
    #[cfg(target_os = "linux")]
    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (a, b) >= (major, minor)
    }

    /// A thread moves itself to SCHED_IDLE (policy 5 in /proc/<tid>/stat).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_moves_itself_to_sched_idle() {
        std::thread::spawn(|| {
            lower_this_thread(Priority::Idle).expect("idle");
            assert_eq!(stat_field(41), i64::from(libc::SCHED_IDLE), "policy");
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_nice_value_out_of_range_is_refused() {
        let e = lower_this_thread(Priority::Nice(25)).unwrap_err();
        assert!(e.to_string().contains("0..=19"), "{e}");
    }

    /// After the call, a C block of 1 MiB (8 times glibc's default mmap threshold) comes from
    /// a heap, and freeing it gives nothing back to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_c_block_comes_from_the_heap_and_stays_there_once_freed() {
        keep_freed_memory();
        #[allow(
            unsafe_code,
            reason = "glibc's malloc, free and mallinfo2, as zstd calls them"
        )]
        // SAFETY: the block is freed once, by the allocator that gave it, and not used after;
        // `mallinfo2` only reads malloc's statistics.
        unsafe {
            let before = libc::mallinfo2();
            let block = libc::malloc(1 << 20);
            assert!(!block.is_null());
            block.cast::<u8>().write_bytes(1, 1 << 20);
            let held = libc::mallinfo2();
            assert_eq!(
                (held.hblks, held.hblkhd),
                (before.hblks, before.hblkhd),
                "no mapping of its own"
            );
            libc::free(block);
            let after = libc::mallinfo2();
            assert!(
                after.arena >= held.arena,
                "kept: {} < {}",
                after.arena,
                held.arena
            );
        }
    }

    #[test]
    fn the_purge_option_is_set_and_read_back() {
        keep_freed_memory();
        #[allow(unsafe_code, reason = "mimalloc's C API, linked by libmimalloc-sys")]
        unsafe extern "C" {
            fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
        }
        // SAFETY: `mi_option_get` takes an option number and returns its value.
        #[allow(
            unsafe_code,
            reason = "reading the option back through mimalloc's C API"
        )]
        let v = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(v, -1);
    }
}
