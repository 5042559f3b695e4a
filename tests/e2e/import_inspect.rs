//! `import` and `trace inspect|validate|export` on real traces.

use reprise_trace::{DatasetReader, TraceRecord};
use serde_json::Value;

use crate::support::*;

fn inspect_json(path: &str) -> Value {
    serde_json::from_str(&ok(&reprise(&["trace", "inspect", "--json", path]))).unwrap()
}

fn close(v: &Value, want: f64, tol: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert!((got - want).abs() <= tol, "got {got}, want {want} ± {tol}");
}

#[test]
fn shipped_sample_trace_has_the_published_figures() {
    // Figures from tests/data/README.md for the Azure 2023 conv trace.
    let j = inspect_json("traces/azure-conv-2023.parquet");
    assert_eq!(j["rows"], 19_366);
    assert_eq!(j["format"], "trace/1");
    close(&j["mean_rate"], 5.53, 0.005);
    close(&j["span_s"], 3501.7, 0.05);
    close(&j["interarrival_cv"], 1.09, 0.005);
    close(&j["dispersion"][0]["idc"], 1.39, 0.005);
    close(&j["dispersion"][1]["idc"], 3.86, 0.005);
    close(&j["dispersion"][2]["idc"], 16.1, 0.05);
    close(&j["input_tokens"]["p50"], 1020.0, 0.0);
    close(&j["input_tokens"]["p90"], 2735.0, 0.5);
    close(&j["input_tokens"]["p99"], 4142.0, 0.5);
    close(&j["input_tokens"]["max"], 14050.0, 0.0);
    close(&j["output_tokens"]["p50"], 129.0, 0.0);
    close(&j["output_tokens"]["p90"], 424.0, 0.5);
    close(&j["output_tokens"]["p99"], 601.0, 0.5);
    close(&j["output_tokens"]["max"], 1000.0, 0.0);
    let text = ok(&reprise(&[
        "trace",
        "inspect",
        "traces/azure-conv-2023.parquet",
    ]));
    assert!(
        text.contains("IDC 1.39 @1 s, 3.86 @10 s, 16.1 @60 s"),
        "{text}"
    );
    assert!(
        text.contains("p50 1,020  p90 2,735  p99 4,142  max 14,050"),
        "{text}"
    );
}

#[test]
fn importing_the_azure_csv_reproduces_the_shipped_sample() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("azure.parquet");
    let csv = public_data("AzureLLMInferenceTrace_conv.csv");
    let stdout = ok(&reprise(&["import", "azure", s(&csv), "-o", s(&out)]));
    assert!(stdout.starts_with("imported 19,366 rows from "), "{stdout}");
    let fresh = DatasetReader::<TraceRecord>::open(&out)
        .unwrap()
        .read_all()
        .unwrap();
    let shipped = DatasetReader::<TraceRecord>::open(repo().join("traces/azure-conv-2023.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(fresh.len(), 19_366);
    assert_eq!(fresh, shipped);
}

#[test]
fn importing_mooncake_keeps_hash_ids_and_finds_poisson_arrivals() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mc");
    let jsonl = public_data("synthetic_trace.jsonl");
    ok(&reprise(&[
        "import",
        "mooncake",
        s(&jsonl),
        "-o",
        s(&out),
        "--part-rows",
        "1000",
    ]));
    let reader = DatasetReader::<TraceRecord>::open(&out).unwrap();
    assert_eq!(reader.files().count(), 4);
    let rows = reader.read_all().unwrap();
    assert_eq!(rows.len(), 3_993);
    // The first line's hash ids are 0..=78, the second's start at 79.
    assert_eq!(
        rows[0].prefix_hashes.as_deref().unwrap(),
        (0..=78).collect::<Vec<u64>>()
    );
    assert_eq!(rows[1].prefix_hashes.as_deref().unwrap()[0], 79);
    let j = inspect_json(s(&out));
    close(&j["mean_rate"], 3.91, 0.005);
    close(&j["interarrival_cv"], 1.01, 0.005);
    close(&j["input_tokens"]["p50"], 11587.0, 0.0);
    close(&j["output_tokens"]["p50"], 69.0, 0.0);
    assert_eq!(j["with_prefix_hashes"], 3_993);
    assert_eq!(j["metadata"]["reprise.block_tokens"], "512");
}

#[test]
fn export_to_jsonl_and_back_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("mc.jsonl");
    let src = dir.path().join("mc.parquet");
    ok(&reprise(&[
        "import",
        "mooncake",
        s(&fixture("mooncake-head20.jsonl")),
        "-o",
        s(&src),
        "--anchor",
        "2025-01-01 00:00:00",
    ]));
    ok(&reprise(&[
        "trace",
        "export",
        s(&src),
        "--to",
        "jsonl",
        "-o",
        s(&jsonl),
    ]));
    let back = dir.path().join("back.parquet");
    ok(&reprise(&[
        "import",
        "jsonl",
        s(&jsonl),
        "-o",
        s(&back),
        "--time-col",
        "arrival",
        "--time-unit",
        "datetime",
        "--id-col",
        "request_id",
        "--hashes-col",
        "prefix_hashes",
        "--block-tokens",
        "512",
    ]));
    let a = DatasetReader::<TraceRecord>::open(&src)
        .unwrap()
        .read_all()
        .unwrap();
    let b = DatasetReader::<TraceRecord>::open(&back)
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(a, b);

    let csv = ok(&reprise(&["trace", "export", s(&src), "--to", "csv"]));
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("request_id,arrival,session_id,model,")
    );
    assert!(lines.next().unwrap().starts_with("00000000,2025-01-01T00:00:00.000000000Z,,,/v1/chat/completions,true,40160,dataset,6,,\"[0,1,2,"));
    assert_eq!(csv.lines().count(), 21);
}

#[test]
fn validate_reports_duplicate_ids_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.csv");
    std::fs::write(
        &input,
        "id,timestamp,input_tokens,output_tokens\na,1,10,5\nb,2,10,5\na,3,10,\n",
    )
    .unwrap();
    let out = dir.path().join("t.parquet");
    ok(&reprise(&[
        "import",
        "csv",
        s(&input),
        "-o",
        s(&out),
        "--id-col",
        "id",
    ]));
    let run = reprise(&["trace", "validate", s(&out)]);
    assert_eq!(run.status.code(), Some(1));
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.contains("error: ")
            && text.contains("duplicate request_id (1 rows; first at row 3, request `a`)"),
        "{text}"
    );
    let clean = ok(&reprise(&[
        "trace",
        "validate",
        "traces/azure-conv-2023.parquet",
    ]));
    assert!(
        clean.ends_with("19,366 rows checked, 0 error kinds, 0 warning kinds\n"),
        "{clean}"
    );
}

#[test]
fn bad_rows_fail_with_file_and_line_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.csv");
    std::fs::write(&input, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,1,2\n16/11/2023 18:15,1,2\n").unwrap();
    let out = dir.path().join("o.parquet");
    let err = fails(&reprise(&["import", "azure", s(&input), "-o", s(&out)]));
    assert_eq!(
        err,
        format!(
            "error: {}:3: column `TIMESTAMP`: invalid date-time `16/11/2023 18:15`: expected YYYY-MM-DD HH:MM:SS",
            input.display()
        )
    );
    assert!(!out.exists(), "no partial output after a failed import");
    let stdout = ok(&reprise(&[
        "import",
        "azure",
        s(&input),
        "-o",
        s(&out),
        "--skip-bad",
    ]));
    assert!(
        stdout.contains("imported 1 rows") && stdout.contains("skipped 1 bad rows"),
        "{stdout}"
    );
}

#[test]
fn broken_parquet_gets_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.parquet");
    let bytes = std::fs::read(repo().join("traces/azure-conv-2023.parquet")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    for sub in ["inspect", "validate"] {
        let err = fails(&reprise(&["trace", sub, s(&p)]));
        assert_eq!(
            err,
            format!(
                "error: {}: truncated or not a Parquet file (no PAR1 footer)",
                p.display()
            )
        );
    }
    let err = fails(&reprise(&[
        "trace",
        "inspect",
        s(&dir.path().join("absent.parquet")),
    ]));
    assert!(
        err.contains("absent.parquet: No such file or directory"),
        "{err}"
    );
}
