//! What the monitor reads from scraped endpoints: the Prometheus text format, and the
//! DCGM series turned into gpu/1 rows.
//! Errors are values, never panics; the body is `reprise_fuzz::targets::prom_text`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reprise_fuzz::targets::prom_text(data));
