//! What the monitor reads from scraped endpoints: arbitrary text through the Prometheus
//! text-format parser and the DCGM conversion; errors are values, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_monitor::gpu::from_dcgm;
use reprise_monitor::prom::parse;
use reprise_trace::Timestamp;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(samples) = parse(text)
    {
        for s in &samples {
            let _ = s.labels_json();
        }
        let _ = from_dcgm(&samples, Timestamp(0), "h");
    }
});
