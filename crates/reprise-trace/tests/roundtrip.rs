//! Write → read round trips for all four formats, part rotation, and bad-input errors.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{
    ArrayRef, Int64Array, LargeStringArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use proptest::prelude::*;
use reprise_trace::{
    DatasetReader, DatasetWriter, GpuSample, Output, ResultRecord, Row, ServerSample, Timestamp,
    TraceRecord, WriterOptions,
};

fn trace(i: u64) -> TraceRecord {
    let mut r = TraceRecord::new(
        format!("req-{i}"),
        Timestamp(1_700_000_000_000_000_000 + i as i64 * 1_000_000),
    );
    r.model = "llama-8b".into();
    r.input_tokens = Some(100 + i as u32);
    r.output_tokens = if i.is_multiple_of(3) {
        None
    } else {
        Some(i as u32)
    };
    r.prefix_hashes = match i % 3 {
        0 => None,
        1 => Some(vec![]),
        _ => Some(vec![i, i + 1, u64::MAX]),
    };
    r.itl_us = if i.is_multiple_of(2) {
        Some(vec![10, 20, u32::MAX])
    } else {
        None
    };
    r.session_id = i.is_multiple_of(4).then(|| format!("s{i}"));
    r.turn = r.session_id.as_ref().map(|_| (i % 5) as u32 + 1);
    r.think_us = (!i.is_multiple_of(5)).then_some(i * 1000);
    r.status = Some(200);
    r
}

fn write_all<R: Row>(out: Output, opts: WriterOptions, rows: &[R]) -> reprise_trace::WriteSummary {
    let mut w = DatasetWriter::<R>::create(out, opts).unwrap();
    w.write_all(rows).unwrap();
    w.close().unwrap()
}

#[test]
fn trace_round_trips_every_column_with_nulls_and_empty_lists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let rows: Vec<_> = (0..1000).map(trace).collect();
    let summary = write_all(
        Output::from_path(&path),
        WriterOptions::default().with_meta("reprise.block_tokens", "512"),
        &rows,
    );
    assert_eq!(summary.rows, 1000);
    assert_eq!(summary.files, vec![path.clone()]);
    let reader = DatasetReader::<TraceRecord>::open(&path).unwrap();
    assert_eq!(
        reader.metadata().get("reprise.format").unwrap(),
        "trace/1.1"
    );
    assert_eq!(
        reader.metadata().get("reprise.block_tokens").unwrap(),
        "512"
    );
    assert_eq!(reader.num_rows(), 1000);
    assert_eq!(reader.read_all().unwrap(), rows);
}

#[test]
fn result_gpu_and_server_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let results: Vec<_> = (0..50)
        .map(|i| ResultRecord {
            request: trace(i),
            run_id: "run-1".into(),
            target: "http://127.0.0.1:1".into(),
            phase: if i < 5 {
                "warmup".into()
            } else {
                "measure".into()
            },
            step_value: (i % 2 == 0).then_some(2.5),
            shard: 1,
            scheduled: Timestamp(i as i64),
            sent: Some(Timestamp(i as i64 + 5)),
            first_chunk: None,
            first_token: Some(Timestamp(i as i64 + 50)),
            done: Some(Timestamp(i as i64 + 500)),
            queue_us: Some(5),
            ttft_us: Some(45),
            e2e_us: Some(495),
            ttft_sched_us: Some(50),
            e2e_sched_us: Some(500),
            tpot_us: None,
            itl_us: Some(vec![]),
            n_in_usage: Some(3),
            n_out_usage: None,
            n_cached_usage: None,
            n_out_counted: Some(7),
            status: Some(if i == 3 { 0 } else { 200 }),
            error_kind: (i == 3).then(|| "connect".into()),
            error: (i == 3).then(|| "connection refused".into()),
        })
        .collect();
    let p = dir.path().join("requests.parquet");
    write_all(Output::from_path(&p), WriterOptions::default(), &results);
    assert_eq!(
        DatasetReader::<ResultRecord>::open(&p)
            .unwrap()
            .read_all()
            .unwrap(),
        results
    );

    let gpus: Vec<_> = (0..20)
        .map(|i| GpuSample {
            time: Timestamp(i),
            host: "h".into(),
            gpu: (i % 2) as u32,
            uuid: Some("GPU-1".into()),
            name: None,
            util_pct: Some(i as f64),
            mem_util_pct: None,
            mem_used_bytes: Some(1 << 33),
            mem_total_bytes: Some(80 << 30),
            power_w: Some(300.5),
            sm_clock_mhz: None,
            temp_c: Some(61.0),
        })
        .collect();
    let p = dir.path().join("gpu.parquet");
    write_all(Output::from_path(&p), WriterOptions::default(), &gpus);
    assert_eq!(
        DatasetReader::<GpuSample>::open(&p)
            .unwrap()
            .read_all()
            .unwrap(),
        gpus
    );

    let server: Vec<_> = (0..20)
        .map(|i| ServerSample {
            time: Timestamp(i),
            source: "http://127.0.0.1:8000/metrics".into(),
            metric: "vllm:num_requests_waiting".into(),
            labels: r#"{"model_name":"m"}"#.into(),
            value: i as f64 * 0.5,
        })
        .collect();
    let p = dir.path().join("server.parquet");
    write_all(Output::from_path(&p), WriterOptions::default(), &server);
    assert_eq!(
        DatasetReader::<ServerSample>::open(&p)
            .unwrap()
            .read_all()
            .unwrap(),
        server
    );
}

#[test]
fn parts_rotate_by_rows_and_read_back_as_one_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let rows: Vec<_> = (0..2500).map(trace).collect();
    let opts = WriterOptions {
        part_max_rows: Some(1000),
        batch_rows: 300,
        ..Default::default()
    };
    let summary = write_all(Output::Dir(out.clone()), opts, &rows);
    let names: Vec<_> = summary
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "part-000000.parquet",
            "part-000001.parquet",
            "part-000002.parquet"
        ]
    );
    let reader = DatasetReader::<TraceRecord>::open(&out)
        .unwrap()
        .with_batch_rows(128);
    let sizes: Vec<usize> = reader.batches().map(|b| b.unwrap().len()).collect();
    assert!(sizes.iter().all(|&n| n <= 128));
    assert_eq!(reader.read_all().unwrap(), rows);
    // Writing again continues the numbering instead of overwriting.
    let again = write_all(
        Output::Dir(out.clone()),
        WriterOptions::default(),
        &rows[..10],
    );
    assert_eq!(again.files[0].file_name().unwrap(), "part-000003.parquet");
    assert_eq!(
        DatasetReader::<TraceRecord>::open(&out).unwrap().num_rows(),
        2510
    );
}

#[test]
fn parts_rotate_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let opts = WriterOptions {
        part_max_age: Some(Duration::from_millis(30)),
        batch_rows: 1,
        ..Default::default()
    };
    let mut w = DatasetWriter::<TraceRecord>::create(Output::Dir(out.clone()), opts).unwrap();
    w.write(&trace(0)).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    w.tick().unwrap();
    w.write(&trace(1)).unwrap();
    let summary = w.close().unwrap();
    assert_eq!(summary.files.len(), 2);
    assert_eq!(
        DatasetReader::<TraceRecord>::open(&out)
            .unwrap()
            .read_all()
            .unwrap(),
        vec![trace(0), trace(1)]
    );
}

#[test]
fn drop_without_close_leaves_valid_parts_and_no_tmp_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    {
        let opts = WriterOptions {
            part_max_rows: Some(100),
            batch_rows: 10,
            ..Default::default()
        };
        let mut w = DatasetWriter::<TraceRecord>::create(Output::Dir(out.clone()), opts).unwrap();
        for i in 0..250 {
            w.write(&trace(i)).unwrap();
        }
        // While writing, the open part is a .tmp file that readers skip.
        let tmp: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.ends_with(".tmp").then_some(n)
            })
            .collect();
        assert_eq!(tmp, ["part-000002.parquet.tmp"]);
        assert_eq!(
            DatasetReader::<TraceRecord>::open(&out).unwrap().num_rows(),
            200
        );
    }
    assert_eq!(
        DatasetReader::<TraceRecord>::open(&out).unwrap().num_rows(),
        250
    );
}

#[test]
fn empty_output_is_a_valid_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.parquet");
    write_all::<TraceRecord>(Output::from_path(&p), WriterOptions::default(), &[]);
    let r = DatasetReader::<TraceRecord>::open(&p).unwrap();
    assert_eq!(r.num_rows(), 0);
    assert!(r.read_all().unwrap().is_empty());
}

// ---------- bad inputs: each asserts the exact message ----------

fn write_raw(path: &std::path::Path, batch: RecordBatch, format: Option<&str>) {
    let kv = format.map(|f| vec![KeyValue::new("reprise.format".to_owned(), f.to_owned())]);
    let props = WriterProperties::builder()
        .set_key_value_metadata(kv)
        .build();
    let mut w =
        ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn err_of(path: &std::path::Path) -> String {
    DatasetReader::<TraceRecord>::open(path)
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn truncated_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    write_all(Output::from_path(&p), WriterOptions::default(), &[trace(1)]);
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(
        err_of(&p),
        format!(
            "{}: truncated or not a Parquet file (no PAR1 footer)",
            p.display()
        )
    );
    fs::write(&p, b"PAR").unwrap();
    assert_eq!(
        err_of(&p),
        format!("{}: truncated or not a Parquet file (3 bytes)", p.display())
    );
}

#[test]
fn wrong_column_type_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("arrival", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a"])),
        Arc::new(StringArray::from(vec!["2024-01-01"])),
    ];
    write_raw(
        &p,
        RecordBatch::try_new(schema, cols).unwrap(),
        Some("trace/1"),
    );
    assert_eq!(
        err_of(&p),
        format!(
            "{}: column `arrival` has type Utf8, expected Timestamp(ns, UTC)",
            p.display()
        )
    );
}

#[test]
fn missing_required_column_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new(
        "request_id",
        DataType::Utf8,
        false,
    )]));
    write_raw(
        &p,
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap(),
        Some("trace/1"),
    );
    assert_eq!(
        err_of(&p),
        format!("{}: required column `arrival` is missing", p.display())
    );
}

#[test]
fn unknown_format_version_and_other_kinds_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    let rows = [trace(1)];
    let mut cols = Vec::new();
    let mut b = TraceRecord::builders(1);
    rows[0].append_to(&mut b);
    cols.extend(TraceRecord::finish(&mut b));
    write_raw(
        &p,
        RecordBatch::try_new(TraceRecord::schema(), cols.clone()).unwrap(),
        Some("trace/2"),
    );
    assert_eq!(
        err_of(&p),
        format!(
            "{}: format `trace/2` is not supported (this reprise reads trace/1)",
            p.display()
        )
    );
    write_raw(
        &p,
        RecordBatch::try_new(TraceRecord::schema(), cols).unwrap(),
        Some("gpu/1"),
    );
    assert_eq!(
        err_of(&p),
        format!(
            "{}: format `gpu/1` is not supported (this reprise reads trace/1)",
            p.display()
        )
    );
}

#[test]
fn trace_1_0_files_without_the_session_columns_still_read() {
    // A file written before trace/1.1: no `turn`, no `think_us`, format `trace/1`.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("old.parquet");
    let mut r = trace(4);
    r.turn = Some(3);
    r.think_us = Some(7);
    let mut b = TraceRecord::builders(1);
    r.append_to(&mut b);
    let cols = TraceRecord::finish(&mut b);
    let schema = TraceRecord::schema();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| !["turn", "think_us"].contains(&schema.field(i).name().as_str()))
        .collect();
    let old = RecordBatch::try_new(TraceRecord::schema(), cols)
        .unwrap()
        .project(&keep)
        .unwrap();
    write_raw(&p, old, Some("trace/1"));
    let rows = DatasetReader::<TraceRecord>::open(&p)
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].turn, rows[0].think_us), (None, None));
    assert_eq!(rows[0].session_id.as_deref(), Some("s4"));
    assert_eq!(rows[0].input_tokens, Some(104));
}

#[test]
fn hand_written_files_with_wider_types_are_read_and_checked() {
    // As polars or pandas would write them: LargeUtf8, Int64, naive microsecond times, no metadata.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::LargeUtf8, true),
        Field::new(
            "arrival",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("input_tokens", DataType::Int64, true),
    ]));
    let batch = |tokens: Vec<Option<i64>>| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(LargeStringArray::from(vec!["a", "b"])) as ArrayRef,
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2])),
                Arc::new(Int64Array::from(tokens)),
            ],
        )
        .unwrap()
    };
    write_raw(&p, batch(vec![Some(7), None]), None);
    let rows = DatasetReader::<TraceRecord>::open(&p)
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].arrival, Timestamp(1000));
    assert_eq!(rows[0].input_tokens, Some(7));
    assert_eq!(rows[1].input_tokens, None);
    assert_eq!(rows[0].endpoint, "/v1/chat/completions");

    write_raw(&p, batch(vec![Some(7), Some(-3)]), None);
    let err = DatasetReader::<TraceRecord>::open(&p)
        .unwrap()
        .read_all()
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: row 2: column `input_tokens`: value does not fit UInt32",
            p.display()
        )
    );
}

#[test]
fn null_in_a_required_column_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, true),
        Field::new(
            "arrival",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as ArrayRef,
            Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3])),
        ],
    )
    .unwrap();
    write_raw(&p, batch, None);
    let err = DatasetReader::<TraceRecord>::open(&p)
        .unwrap()
        .read_all()
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: row 2: column `request_id`: null in a column that requires a value",
            p.display()
        )
    );
}

#[test]
fn empty_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        err_of(dir.path()),
        format!(
            "{}: no part files (*.parquet) in this directory",
            dir.path().display()
        )
    );
}

fn arb_trace() -> impl Strategy<Value = TraceRecord> {
    (
        "[a-z0-9-]{1,12}",
        any::<i64>(),
        proptest::option::of("\\PC{0,8}"),
        any::<bool>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(proptest::collection::vec(any::<u64>(), 0..6)),
        proptest::option::of(any::<u16>()),
        proptest::option::of(proptest::collection::vec(any::<u32>(), 0..6)),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(id, t, session, stream, tokens, hashes, status, itl, ttft)| {
                let mut r = TraceRecord::new(id, Timestamp(t));
                r.session_id = session;
                r.stream = stream;
                r.input_tokens = tokens;
                r.output_tokens = tokens.map(|t| t / 2);
                r.prefix_hashes = hashes;
                r.status = status;
                r.itl_us = itl;
                r.ttft_us = ttft;
                r.prompt = Some("héllo \u{1F600}".into());
                r
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_traces_round_trip(rows in proptest::collection::vec(arb_trace(), 0..200), part_rows in 1u64..80) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ds");
        let opts = WriterOptions { part_max_rows: Some(part_rows), batch_rows: 7, ..Default::default() };
        write_all(Output::Dir(out.clone()), opts, &rows);
        let back = DatasetReader::<TraceRecord>::open(&out).unwrap().read_all().unwrap();
        prop_assert_eq!(back, rows);
    }
}

#[test]
fn a_rehearsal_writes_nothing_and_leaves_the_output_as_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WriterOptions {
        part_max_rows: Some(40),
        batch_rows: 16,
        ..Default::default()
    };
    let real: Vec<_> = (0..100).map(trace).collect();
    let plain = dir.path().join("plain");
    let plain_summary = write_all(Output::Dir(plain.clone()), opts.clone(), &real);

    let rehearsed = dir.path().join("rehearsed");
    let mut w = DatasetWriter::<TraceRecord>::create(Output::Dir(rehearsed.clone()), opts).unwrap();
    // Three batches and a half, of rows unlike the real ones.
    w.rehearse((1000..1056).map(trace)).unwrap();
    assert_eq!(w.rows(), 0);
    assert_eq!(
        fs::read_dir(&rehearsed).unwrap().count(),
        0,
        "a rehearsal opens no file"
    );
    w.write(&real[0]).unwrap();
    // With a row pending, a rehearsal must not touch the builders.
    w.rehearse((2000..2010).map(trace)).unwrap();
    w.write_all(&real[1..]).unwrap();
    let summary = w.close().unwrap();

    assert_eq!(summary.rows, plain_summary.rows);
    assert_eq!(summary.files.len(), plain_summary.files.len());
    for (a, b) in plain_summary.files.iter().zip(&summary.files) {
        assert_eq!(a.file_name(), b.file_name());
        assert_eq!(
            fs::read(a).unwrap(),
            fs::read(b).unwrap(),
            "{}",
            b.display()
        );
    }
    assert_eq!(
        DatasetReader::<TraceRecord>::open(&rehearsed)
            .unwrap()
            .read_all()
            .unwrap(),
        real
    );
}
