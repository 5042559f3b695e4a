//! The checked trace/1 reader on a file of these bytes.
//! Errors are values, never panics; the body is `reprise_fuzz::targets::read_parquet`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reprise_fuzz::targets::read_parquet(data));
