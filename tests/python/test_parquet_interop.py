"""reprise Parquet opens in polars, pyarrow and pandas with the documented dtypes.

The trace files are made by the real `reprise` binary (path in $REPRISE_BIN) from the
shipped sample trace and the fixtures, so what Jupyter users read is what reprise writes.
"""

import os
import subprocess
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "traces" / "azure-conv-2023.parquet"


def reprise(*args: str) -> str:
    binary = os.environ.get("REPRISE_BIN", str(REPO / "target" / "debug" / "reprise"))
    done = subprocess.run([binary, *args], check=True, capture_output=True, text=True, cwd=REPO)
    return done.stdout


@pytest.fixture(scope="module")
def mooncake(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mc") / "mooncake.parquet"
    reprise("import", "mooncake", str(REPO / "tests/fixtures/mooncake-head20.jsonl"), "-o", str(out),
            "--anchor", "2025-01-01 00:00:00")
    return out


@pytest.fixture(scope="module")
def burstgpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "parts"
    reprise("import", "burstgpt", str(REPO / "tests/fixtures/burstgpt-v3.csv"), "-o", str(out), "--part-rows", "1")
    return out


def test_polars_reads_trace_dtypes_and_values():
    df = pl.read_parquet(SAMPLE)
    assert df.height == 19_366
    assert df.schema["request_id"] == pl.String
    assert df.schema["arrival"] == pl.Datetime("ns", "UTC")
    assert df.schema["input_tokens"] == pl.UInt32
    assert df.schema["output_tokens"] == pl.UInt32
    assert df.schema["stream"] == pl.Boolean
    assert df.schema["status"] == pl.UInt16
    assert df.schema["ttft_us"] == pl.UInt64
    assert df.schema["prefix_hashes"] == pl.List(pl.UInt64)
    assert df.schema["itl_us"] == pl.List(pl.UInt32)
    assert df["input_tokens"].median() == 1020
    assert df["output_tokens"].median() == 129
    assert str(df["arrival"][0]) == "2023-11-16 18:15:46.680590+00:00"
    span = (df["arrival"].max() - df["arrival"].min()).total_seconds()
    assert round(df.height / span, 2) == 5.53


def test_pyarrow_reads_schema_and_metadata():
    table = pq.read_table(SAMPLE)
    schema = table.schema
    assert schema.field("arrival").type == pa.timestamp("ns", tz="UTC")
    assert schema.field("input_tokens").type == pa.uint32()
    assert schema.field("prefix_hashes").type == pa.list_(pa.uint64())
    assert schema.field("request_id").type == pa.string()
    assert not schema.field("request_id").nullable
    assert schema.field("session_id").nullable
    meta = pq.read_metadata(SAMPLE).metadata
    assert meta[b"reprise.format"] == b"trace/1"
    assert meta[b"reprise.source"] == b"azure"
    # The same tags in the Arrow schema, where pyarrow and pandas users look.
    assert schema.metadata[b"reprise.format"] == b"trace/1"
    assert schema.metadata[b"reprise.source"] == b"azure"
    assert b"reprise.version" in schema.metadata


def test_pandas_reads_timestamps_as_utc():
    df = pd.read_parquet(SAMPLE)
    assert len(df) == 19_366
    assert str(df["arrival"].dtype) == "datetime64[ns, UTC]"
    assert str(df["input_tokens"].dtype) == "uint32"
    assert df["input_tokens"].quantile(0.99) == pytest.approx(4142, abs=0.5)


def test_lists_and_nulls_survive(mooncake):
    df = pl.read_parquet(mooncake)
    assert df.height == 20
    assert df["prefix_hashes"][0].to_list() == list(range(79))
    assert df["session_id"].null_count() == 20
    assert pq.read_metadata(mooncake).metadata[b"reprise.block_tokens"] == b"512"
    pdf = pd.read_parquet(mooncake)
    assert list(pdf["prefix_hashes"][1][:2]) == [79, 80]


def test_part_directories_read_as_one_dataset(burstgpt):
    parts = sorted(p.name for p in burstgpt.iterdir())
    assert parts == [f"part-{i:06}.parquet" for i in range(6)]
    df = pl.read_parquet(burstgpt / "*.parquet")
    assert df.height == 6
    assert df["failure"].to_list()[:2] == [None, "burstgpt: zero response tokens (failed request)"]
    assert df["e2e_us"].to_list()[:2] == [1_250_000, 100_000]
    # trace/1.1's session columns, as polars reads them.
    assert df.schema["turn"] == pl.UInt32
    assert df.schema["think_us"] == pl.UInt64
    assert df["turn"].to_list() == [1, 2, 1, 3, 2, None]
    assert df["think_us"].to_list() == [None, None, None, 3_400_000, 7_000_000, None]
    assert pq.read_table(burstgpt).num_rows == 6


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    reprise("replay", "traces/azure-conv-2023.parquet", "--target", "sim:instant", "--speed", "50",
            "--duration", "30", "--out", str(out))
    return out


def test_replay_results_read_with_the_documented_dtypes(replay_run):
    df = pl.read_parquet(replay_run / "requests.parquet")
    assert df.height > 50
    for col in ["scheduled", "sent", "first_token", "done", "arrival"]:
        assert df.schema[col] == pl.Datetime("ns", "UTC"), col
    for col in ["queue_us", "ttft_us", "e2e_us", "ttft_sched_us", "e2e_sched_us", "tpot_us"]:
        assert df.schema[col] == pl.UInt64, col
    assert df.schema["itl_us"] == pl.List(pl.UInt32)
    assert df.schema["status"] == pl.UInt16
    assert df.schema["trace_status"] == pl.UInt16
    assert (df["n_in_usage"] == df["input_tokens"]).all()
    assert (df["n_out_usage"] == df["output_tokens"]).all()
    # The same metric from the raw timestamps and from the stored duration.
    ttft = (df["first_token"] - df["sent"]).dt.total_microseconds()
    assert ((ttft - df["ttft_us"].cast(pl.Int64)).abs() <= 1).all()
    import json
    run = json.loads((replay_run / "run.json").read_text())
    assert run["summary"]["overall"]["ok"] == df.filter(pl.col("phase") == "measure").height
    pdf = pd.read_parquet(replay_run / "requests.parquet")
    assert str(pdf["scheduled"].dtype) == "datetime64[ns, UTC]"
    schema_meta = pq.read_table(replay_run / "requests.parquet").schema.metadata
    assert schema_meta[b"reprise.format"] == b"result/1.1"
    assert schema_meta[b"reprise.run_id"] == run["run_id"].encode()
