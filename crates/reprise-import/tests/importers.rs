//! Importers on real data (fixtures cut from the public traces) and on bad rows.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use reprise_import::{ColumnMap, ImportOptions, Source, TimeUnit, import, parse_all};
use reprise_trace::sessions::TurnLengths;
use reprise_trace::time::parse_datetime;
use reprise_trace::{DatasetReader, Output, Timestamp, TraceRecord};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn parse(source: &Source, text: &str) -> Result<Vec<TraceRecord>, String> {
    parse_all(
        source,
        Path::new("in.csv"),
        Cursor::new(text.to_owned()),
        &ImportOptions::default(),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn azure_2023_rows_keep_time_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("azure.parquet");
    let summary = import(
        &Source::Azure,
        &fixture("azure-conv-2023-head200.csv"),
        Output::from_path(&out),
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(summary.rows, 200);
    assert_eq!(summary.skipped, 0);
    let reader = DatasetReader::<TraceRecord>::open(&out).unwrap();
    assert_eq!(reader.metadata()["reprise.source"], "azure");
    let rows = reader.read_all().unwrap();
    assert_eq!(rows[0].request_id, "00000000");
    assert_eq!(
        rows[0].arrival,
        parse_datetime("2023-11-16 18:15:46.6805900").unwrap()
    );
    assert_eq!(
        (rows[0].input_tokens, rows[0].output_tokens),
        (Some(374), Some(44))
    );
    assert_eq!(rows[3].input_tokens, Some(91));
    assert_eq!(rows[0].input_tokens_source, "dataset");
    assert!(rows.windows(2).all(|w| w[0].arrival <= w[1].arrival));
}

#[test]
fn azure_2024_timestamp_forms() {
    let rows = parse(
        &Source::Azure,
        &std::fs::read_to_string(fixture("azure-2024-forms.csv")).unwrap(),
    )
    .unwrap();
    let t0 = parse_datetime("2024-05-10 00:00:00Z").unwrap().0;
    let offsets: Vec<_> = rows.iter().map(|r| r.arrival.0 - t0).collect();
    assert_eq!(offsets, [8_329_900, 1_000_000_000, 2_000_000_000]);
    assert_eq!(rows[1].output_tokens, Some(0));
}

#[test]
fn mooncake_keeps_hash_ids_and_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.parquet");
    let anchor = parse_datetime("2025-01-01 00:00:00").unwrap();
    let opts = ImportOptions {
        anchor: Some(anchor),
        ..Default::default()
    };
    let summary = import(
        &Source::Mooncake,
        &fixture("mooncake-head20.jsonl"),
        Output::from_path(&out),
        &opts,
    )
    .unwrap();
    assert_eq!(summary.rows, 20);
    let reader = DatasetReader::<TraceRecord>::open(&out).unwrap();
    assert_eq!(reader.metadata()["reprise.block_tokens"], "512");
    let rows = reader.read_all().unwrap();
    assert_eq!(rows[0].input_tokens, Some(40160));
    assert_eq!(rows[0].output_tokens, Some(6));
    assert_eq!(
        rows[0].prefix_hashes.as_ref().unwrap(),
        &(0..=78).collect::<Vec<u64>>()
    );
    assert_eq!(rows[2].arrival, Timestamp(anchor.0 + 40_000_000));
    assert_eq!(rows[1].prefix_hashes.as_ref().unwrap()[0], 79);
}

#[test]
fn burstgpt_v1_and_v3_keep_and_mark_failures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.parquet");
    let summary = import(
        &Source::BurstGpt,
        &fixture("burstgpt-v1.csv"),
        Output::from_path(&out),
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!((summary.rows, summary.marked_failures), (3, 1));
    let rows = DatasetReader::<TraceRecord>::open(&out)
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(
        rows[1].failure.as_deref(),
        Some("burstgpt: zero response tokens (failed request)")
    );
    assert_eq!(rows[1].input_tokens, Some(1087));
    assert_eq!(rows[2].model, "GPT-4");
    assert_eq!(rows[2].arrival, Timestamp(118_000_000_000));
    assert_eq!(rows[2].params.as_deref(), Some(r#"{"log_type":"API log"}"#));

    let v3 = parse(
        &Source::BurstGpt,
        &std::fs::read_to_string(fixture("burstgpt-v3.csv")).unwrap(),
    )
    .unwrap();
    assert_eq!(v3[0].session_id.as_deref(), Some("s-1"));
    assert_eq!(v3[0].e2e_us, Some(1_250_000));
    assert_eq!(v3[0].arrival, Timestamp(500_000_000));
    assert!(v3[1].failure.is_some());
    // Sessions: turns in arrival order; think time from the previous turn's end (arrival +
    // Elapsed time); none where a turn came before its predecessor ended (1.5 < 1.75).
    let turns: Vec<_> = v3.iter().map(|r| (r.turn, r.think_us)).collect();
    assert_eq!(
        turns,
        [
            (Some(1), None),
            (Some(2), None),
            (Some(1), None),
            (Some(3), Some(3_400_000)),
            (Some(2), Some(7_000_000)),
            (None, None),
        ]
    );
    // BurstGPT's request tokens are cumulative (the API's prompt tokens): kept as they are.
    let total: u32 = v3.iter().filter_map(|r| r.input_tokens).sum();
    assert_eq!(total, 100 + 150 + 40 + 200 + 80 + 10);
}

#[test]
fn per_turn_lengths_are_made_cumulative_and_given_turns_kept() {
    let map = ColumnMap {
        time: "t".into(),
        time_unit: TimeUnit::Seconds,
        session: Some("conv".into()),
        turn: Some("k".into()),
        ..ColumnMap::default()
    };
    let text = "t,conv,k,input_tokens,output_tokens\n\
                0,a,1,50,10\n1,b,1,7,3\n4,a,2,20,30\n9,a,3,5,1\n9,b,2,1,1\n";
    let per_turn = ImportOptions {
        turn_lengths: Some(TurnLengths::PerTurn),
        ..ImportOptions::default()
    };
    let rows = parse_all(
        &Source::Csv(map.clone()),
        Path::new("in.csv"),
        Cursor::new(text.to_owned()),
        &per_turn,
    )
    .unwrap();
    let inputs: Vec<_> = rows.iter().map(|r| r.input_tokens.unwrap()).collect();
    // a: 50; 50 + 10 + 20 = 80; 80 + 30 + 5 = 115. b: 7; 7 + 3 + 1 = 11.
    assert_eq!(inputs, [50, 7, 80, 115, 11]);
    // The totals: every turn's own tokens plus the history it carries.
    let own: u32 = [50, 7, 20, 5, 1].iter().sum();
    let history: u32 = (50 + 10) + (80 + 30) + (7 + 3);
    assert_eq!(inputs.iter().sum::<u32>(), own + history);
    assert_eq!(rows[3].turn, Some(3));
    // Cumulative (the default): lengths as given.
    let rows = parse(&Source::Csv(map), text).unwrap();
    let inputs: Vec<_> = rows.iter().map(|r| r.input_tokens.unwrap()).collect();
    assert_eq!(inputs, [50, 7, 20, 5, 1]);
    // A turn 0 is refused, naming the column.
    let err = parse(
        &Source::Csv(ColumnMap {
            time: "t".into(),
            session: Some("conv".into()),
            turn: Some("k".into()),
            ..ColumnMap::default()
        }),
        "t,conv,k,input_tokens,output_tokens\n0,a,0,1,1\n",
    )
    .unwrap_err();
    assert!(
        err.contains("in.csv:2: column `k`: turns are counted from 1"),
        "{err}"
    );
}

#[test]
fn bad_timestamp_names_the_line() {
    let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,1,2\n2023-13-16 18:15:46.68,1,2\n";
    assert_eq!(
        parse(&Source::Azure, text).unwrap_err(),
        "in.csv:3: column `TIMESTAMP`: invalid date-time `2023-13-16 18:15:46.68`: no such date"
    );
}

#[test]
fn bad_jsonl_line_names_the_line() {
    let text = "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}\n\n{\"timestamp\": 3, \"input_length\": \n";
    let err = parse(&Source::Mooncake, text).unwrap_err();
    assert_eq!(
        err,
        "in.csv:3: not JSON: EOF while parsing a value at line 1 column 33"
    );
    assert_eq!(
        parse(&Source::Mooncake, "[1,2]\n").unwrap_err(),
        "in.csv:1: not a JSON object"
    );
}

#[test]
fn wrong_field_count_and_missing_header_are_reported() {
    let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1\n";
    assert_eq!(
        parse(&Source::Azure, text).unwrap_err(),
        "in.csv:2: expected 3 fields, found 2"
    );
    assert_eq!(
        parse(&Source::Azure, "time,a,b\n").unwrap_err(),
        "in.csv: no column `TIMESTAMP` in the header"
    );
    assert_eq!(
        parse(&Source::Azure, "").unwrap_err(),
        "in.csv: empty file: no header row"
    );
}

#[test]
fn skip_bad_counts_rows_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1,2\nnot-a-time,1,2\n2023-11-16 18:15:47,x,2\n2023-11-16 18:15:48,3,4\n").unwrap();
    let out = dir.path().join("o.parquet");
    let opts = ImportOptions {
        skip_bad: true,
        ..Default::default()
    };
    let s = import(&Source::Azure, &input, Output::from_path(&out), &opts).unwrap();
    assert_eq!((s.rows, s.skipped), (2, 2));
    assert_eq!(
        s.skipped_examples[1],
        format!(
            "{}:4: column `ContextTokens`: `x` is not a token count",
            input.display()
        )
    );
    // Without --skip-bad, the import fails and leaves no output file behind.
    let out2 = dir.path().join("o2.parquet");
    let err = import(
        &Source::Azure,
        &input,
        Output::from_path(&out2),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains(":3: column `TIMESTAMP`"), "{err}");
    assert!(!out2.exists());
    assert!(!dir.path().join("o2.parquet.tmp").exists());
}

#[test]
fn generic_csv_and_jsonl_with_column_maps() {
    let map = ColumnMap {
        time: "t".into(),
        time_unit: TimeUnit::Millis,
        input: Some("in".into()),
        output: Some("out".into()),
        model: Some("m".into()),
        session: Some("conv".into()),
        turn: None,
        request_id: Some("id".into()),
        max_tokens: None,
        prefix_hashes: Some("h".into()),
    };
    let rows = parse(
        &Source::Csv(map.clone()),
        "id,t,in,out,m,conv,h\na,1500,10,20,llama,c1,1;2\nb,2500,11,,llama,,\n",
    )
    .unwrap();
    assert_eq!(rows[0].request_id, "a");
    assert_eq!(rows[0].arrival, Timestamp(1_500_000_000));
    assert_eq!(rows[0].prefix_hashes.as_deref(), Some(&[1u64, 2][..]));
    assert_eq!(rows[1].output_tokens, None);
    assert_eq!(rows[1].session_id, None);

    let rows = parse(
        &Source::Jsonl(map),
        "{\"id\":\"x\",\"t\":7,\"in\":3,\"out\":4,\"m\":\"q\",\"conv\":9,\"h\":[5]}\n",
    )
    .unwrap();
    assert_eq!(rows[0].arrival, Timestamp(7_000_000));
    assert_eq!(rows[0].session_id.as_deref(), Some("9"));
    assert_eq!(rows[0].prefix_hashes.as_deref(), Some(&[5u64][..]));

    let dt = ColumnMap {
        time: "when".into(),
        time_unit: TimeUnit::DateTime,
        ..Default::default()
    };
    let rows = parse(
        &Source::Csv(dt),
        "when,input_tokens,output_tokens\n2024-01-01T00:00:01Z,1,2\n",
    )
    .unwrap();
    assert_eq!(
        rows[0].arrival,
        parse_datetime("2024-01-01 00:00:01").unwrap()
    );
}

#[test]
fn limit_stops_early() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.parquet");
    let opts = ImportOptions {
        limit: Some(5),
        ..Default::default()
    };
    let s = import(
        &Source::Azure,
        &fixture("azure-conv-2023-head200.csv"),
        Output::from_path(&out),
        &opts,
    )
    .unwrap();
    assert_eq!(s.rows, 5);
    assert_eq!(
        DatasetReader::<TraceRecord>::open(&out).unwrap().num_rows(),
        5
    );
}
