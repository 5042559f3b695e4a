//! Write and read throughput of trace/1, against raw arrow-rs/parquet on the same data in
//! the same process (the baseline), on one thread.
//!
//! Run: `cargo bench -p reprise-trace --bench trace_io` (rows: `REPRISE_BENCH_ROWS`,
//! default 1,000,000). Prints a table of rows/s and the ratio to the baseline.

use std::fs::File;
use std::time::Instant;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use reprise_trace::{
    DatasetReader, DatasetWriter, Output, Row, Timestamp, TraceRecord, WriterOptions,
};

fn records(n: usize) -> Vec<TraceRecord> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut t = 1_700_000_000_000_000_000i64;
    (0..n)
        .map(|i| {
            t += (next() % 400_000_000) as i64;
            let mut r = TraceRecord::new(format!("{i:08}"), Timestamp(t));
            r.model = "llama-3.1-8b-instruct".into();
            r.input_tokens_source = "dataset".into();
            let input = (next() % 8000) as u32 + 16;
            r.input_tokens = Some(input);
            r.output_tokens = Some((next() % 1000) as u32 + 1);
            if i % 2 == 0 {
                let base = next() % 1000;
                r.prefix_hashes =
                    Some((0..u64::from(input / 512)).map(|b| base * 64 + b).collect());
                r.session_id = Some(format!("s{:x}", next() % 5000));
            }
            r
        })
        .collect()
}

fn rate(rows: usize, secs: f64) -> f64 {
    rows as f64 / secs
}

fn main() {
    let n: usize = std::env::var("REPRISE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let recs = records(n);

    // Baseline write: RecordBatches built up front, then only ArrowWriter (same settings).
    let mut batches = Vec::new();
    for chunk in recs.chunks(8192) {
        let mut b = TraceRecord::builders(chunk.len());
        for r in chunk {
            r.append_to(&mut b);
        }
        batches.push(
            RecordBatch::try_new(TraceRecord::schema(), TraceRecord::finish(&mut b))
                .expect("batch"),
        );
    }
    let raw_path = dir.path().join("raw.parquet");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level")))
        .set_max_row_group_row_count(Some(65_536))
        .build();
    let start = Instant::now();
    let mut w = ArrowWriter::try_new(
        File::create(&raw_path).expect("create"),
        TraceRecord::schema(),
        Some(props),
    )
    .expect("writer");
    for b in &batches {
        w.write(b).expect("write");
    }
    w.close().expect("close");
    let raw_write = rate(n, start.elapsed().as_secs_f64());

    // reprise write: records one by one through DatasetWriter.
    let path = dir.path().join("trace.parquet");
    let start = Instant::now();
    let mut w =
        DatasetWriter::<TraceRecord>::create(Output::from_path(&path), WriterOptions::default())
            .expect("writer");
    for r in &recs {
        w.write(r).expect("write");
    }
    w.close().expect("close");
    let our_write = rate(n, start.elapsed().as_secs_f64());

    // Baseline read: decode to RecordBatches only.
    let start = Instant::now();
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).expect("open"))
        .expect("builder")
        .with_batch_size(8192)
        .build()
        .expect("reader");
    let mut rows = 0;
    for b in reader {
        rows += b.expect("batch").num_rows();
    }
    assert_eq!(rows, n);
    let raw_read = rate(n, start.elapsed().as_secs_f64());

    // reprise read: checked, decoded into TraceRecords batch by batch.
    let start = Instant::now();
    let reader = DatasetReader::<TraceRecord>::open(&path).expect("open");
    let mut rows = 0;
    for b in reader.batches() {
        rows += b.expect("batch").len();
    }
    assert_eq!(rows, n);
    let our_read = rate(n, start.elapsed().as_secs_f64());

    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "trace/1 I/O, {n} rows, one thread, file {:.1} MB ({:.1} bytes/row)",
        size as f64 / 1e6,
        size as f64 / n as f64
    );
    println!(
        "| operation | baseline (raw arrow-rs) rows/s | reprise rows/s | reprise / baseline | target |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| write | {raw_write:>12.0} | {our_write:>12.0} | {:.2} | >= 500,000 |",
        our_write / raw_write
    );
    println!(
        "| read  | {raw_read:>12.0} | {our_read:>12.0} | {:.2} | >= 1,000,000 |",
        our_read / raw_read
    );
}
