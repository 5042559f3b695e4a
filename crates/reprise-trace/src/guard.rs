//! Decoding untrusted Parquet without a panic escaping: the parquet and arrow crates assume
//! well-formed data in places and panic on some corrupt files (an out-of-bounds slice of
//! definition levels, found by fuzzing `read_parquet`). [`decode`] runs such a call,
//! turns a panic into an error, and keeps the panic's message off stderr (the error says
//! it instead, in the one line the CLI prints), while every other panic of the process is
//! reported as before.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// Set while [`decode`] runs on this thread.
    static DECODING: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Wraps the process's panic hook (once): panics inside [`decode`] are silent, any other
/// goes to the hook that was there.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !DECODING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside becomes `Err` with its message.
pub(crate) fn decode<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let was = DECODING.with(|d| d.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    DECODING.with(|d| d.set(was));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".to_owned());
        format!("corrupt data: the Parquet decoder failed ({message})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_becomes_an_error_and_values_pass_through() {
        assert_eq!(decode(|| 7), Ok(7));
        let err = decode(|| -> u32 { panic!("offset + len out of bounds") }).unwrap_err();
        assert_eq!(
            err,
            "corrupt data: the Parquet decoder failed (offset + len out of bounds)"
        );
        let owned = decode(|| -> u32 { panic!("{} {}", "formatted", 1) }).unwrap_err();
        assert!(owned.ends_with("(formatted 1)"), "{owned}");
        // The flag is cleared afterwards.
        assert!(!DECODING.with(Cell::get));
    }
}
