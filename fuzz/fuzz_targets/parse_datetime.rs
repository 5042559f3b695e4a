//! The UTC date-time parser (importers, `--anchor`): accepted input round-trips.
//! Errors are values, never panics; the body is `reprise_fuzz::targets::parse_datetime`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reprise_fuzz::targets::parse_datetime(data));
