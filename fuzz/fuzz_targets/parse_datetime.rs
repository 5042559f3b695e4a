//! The date-time parser never panics, and what it accepts formats back to the same instant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_trace::time::{format_rfc3339, parse_datetime};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = parse_datetime(text) {
            assert_eq!(parse_datetime(&format_rfc3339(t)), Ok(t));
        }
    }
});
