//! The checked reader rejects any corrupt file with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_trace::{DatasetReader, TraceRecord};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("reprise-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("x.parquet");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(reader) = DatasetReader::<TraceRecord>::open(&path) {
            let _ = reader.read_all();
        }
    }
});
