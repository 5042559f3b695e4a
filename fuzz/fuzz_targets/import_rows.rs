//! Every importer turns arbitrary bytes into rows or a line-numbered error, never a panic.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use reprise_import::{ColumnMap, ImportOptions, Source, TimeUnit, parse_all};

fuzz_target!(|data: &[u8]| {
    let map = ColumnMap { time_unit: TimeUnit::DateTime, ..ColumnMap::default() };
    for source in [
        Source::Azure,
        Source::Mooncake,
        Source::BurstGpt,
        Source::Csv(ColumnMap::default()),
        Source::Jsonl(map),
    ] {
        let _ = parse_all(&source, Path::new("fuzz"), Cursor::new(data), &ImportOptions::default());
    }
});
