"""The notebooks in notebooks/ run top to bottom, headlessly, on data this test makes with
the real `reprise` binary (sample trace, replays against the built-in sim with monitoring,
synthetic workloads), and compute the same figures as `reprise analyze` / `synth check`.

Also: every committed notebook is in sync with its source in notebooks/src (and carries no
outputs), and the Parquet columns the notebooks read are the documented ones.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
SAMPLE = REPO / "traces" / "azure-conv-2023.parquet"


def reprise(*args: str) -> str:
    binary = os.environ.get("REPRISE_BIN", str(REPO / "target" / "debug" / "reprise"))
    done = subprocess.run([binary, *args], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, f"reprise {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("nbdata")
    runs = {
        "ramp": ["--target", "sim", "--ramp", "concurrency:1,4,16", "--step-duration", "2",
                 "--scrape", "target", "--monitor-interval-ms", "200"],
        "base": ["--target", "sim", "--ramp", "concurrency:4", "--step-duration", "3"],
        "new": ["--target", "sim:small-t4", "--ramp", "concurrency:4", "--step-duration", "3"],
        "two": ["--target", "sim", "--target", "sim", "--ramp", "concurrency:8", "--step-duration", "3"],
    }
    for name, args in runs.items():
        reprise("replay", *args, "--seed", "1", "--out", str(d / name))
    reprise("analyze", *(str(d / n) for n in runs))
    reprise("synth", "fit", str(SAMPLE), "-o", str(d / "model.json"))
    reprise("synth", "gen", str(d / "model.json"), "-o", str(d / "x2.parquet"), "--scale", "2", "--seed", "1")
    binary = os.environ.get("REPRISE_BIN", str(REPO / "target" / "debug" / "reprise"))
    check = subprocess.run(
        [binary, "synth", "check", str(SAMPLE), str(d / "x2.parquet"), "--scale", "2", "--json"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert check.stdout.strip().startswith("{"), check.stderr
    (d / "check.json").write_text(check.stdout)
    return {name: d / name for name in runs} | {"dir": d}


def execute(name: str, env: dict[str, str], workdir: Path) -> dict:
    """Runs a notebook with `env` set; returns the JSON its last `CHECKS` line printed."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = dict(os.environ)
    os.environ.update({"MPLBACKEND": "Agg", "REPRISE_REPO": str(REPO), **env})
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    found = None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("CHECKS "):
                    found = json.loads(line[len("CHECKS "):])
    return found or {}


def test_explore_trace(data):
    checks = execute("01_explore_trace.ipynb", {"REPRISE_TRACE": str(SAMPLE)}, data["dir"])
    rows = {r["metric"]: r for r in json.loads((data["dir"] / "check.json").read_text())["rows"]}
    # The notebook's CV of the sample trace is synth check's "expected" one.
    assert checks["inter_arrival_cv"] == pytest.approx(rows["inter-arrival CV"]["expected"], rel=1e-3)
    assert checks["prefix_block_hit_share"] is None


def test_explore_a_trace_with_prefix_hashes(data):
    # Mooncake's hash_ids become prefix_hashes: three requests of 2, 3 and 2 blocks, the
    # second and third sharing the first's first block and the third the second's second:
    # 7 blocks, 3 seen before (0, 0 and 2).
    src = data["dir"] / "mc.jsonl"
    src.write_text(
        '{"timestamp": 0, "input_length": 1000, "output_length": 10, "hash_ids": [0, 1]}\n'
        '{"timestamp": 500, "input_length": 1500, "output_length": 20, "hash_ids": [0, 2, 3]}\n'
        '{"timestamp": 900, "input_length": 1000, "output_length": 30, "hash_ids": [0, 2]}\n'
    )
    out = data["dir"] / "mooncake.parquet"
    reprise("import", "mooncake", str(src), "-o", str(out), "--anchor", "2025-01-01 00:00:00")
    checks = execute("01_explore_trace.ipynb", {"REPRISE_TRACE": str(out)}, data["dir"])
    assert checks["requests"] == 3
    assert checks["prefix_block_hit_share"] == pytest.approx(3 / 7)


def test_explore_a_trace_with_sessions(data):
    # BurstGPT v3: two conversations (3 and 2 turns, think times 3.4 s and 7.0 s from
    # `Elapsed time`) and one request without a session.
    out = data["dir"] / "burstgpt-v3.parquet"
    reprise("import", "burstgpt", str(REPO / "tests" / "fixtures" / "burstgpt-v3.csv"), "-o", str(out))
    checks = execute("01_explore_trace.ipynb", {"REPRISE_TRACE": str(out)}, data["dir"])
    assert checks["sessions"] == 2
    assert checks["turns"] == 5
    assert checks["turns_mean"] == pytest.approx(2.5)
    assert checks["think_s"] == pytest.approx([3.4, 7.0])
    # s-1: 150 − 100 − 20 = 30, then 200 − 150 − 0 = 50; s-2: 80 − 40 − 10 = 30.
    assert checks["new_tokens_p50"] == pytest.approx(30.0)
    # The sample trace has none.
    assert execute("01_explore_trace.ipynb", {"REPRISE_TRACE": str(SAMPLE)}, data["dir"])["sessions"] == 0


def test_replay_run_matches_the_analyzer(data):
    checks = execute("02_replay_run.ipynb", {"REPRISE_RUN": str(data["ramp"])}, data["dir"])
    summary = json.loads((data["ramp"] / "summary.json").read_text())
    assert checks["ttft_p99_ms"] == pytest.approx(summary["overall"]["latency"]["ttft"]["p99"], rel=1e-9)
    assert checks["measured"] == summary["overall"]["requests"]


def test_compare_runs_matches_the_analyzer(data):
    checks = execute(
        "03_compare_runs.ipynb",
        {
            "REPRISE_BASE": str(data["base"]),
            "REPRISE_NEW": str(data["new"]),
            "REPRISE_SCALING": f"{data['base']}:1,{data['two']}:2",
        },
        data["dir"],
    )
    for name in ["base", "new"]:
        summary = json.loads((data[name] / "summary.json").read_text())
        assert checks[f"{name}_req_per_s"] == pytest.approx(summary["overall"]["request_throughput"], rel=1e-9)


def test_synth_vs_source_matches_the_check(data):
    d = data["dir"]
    checks = execute(
        "04_synth_vs_source.ipynb",
        {
            "REPRISE_SOURCE": str(SAMPLE),
            "REPRISE_GENERATED": str(d / "x2.parquet"),
            "REPRISE_CHECK": str(d / "check.json"),
            "REPRISE_SCALE": "2",
        },
        d,
    )
    rows = {r["metric"]: r for r in json.loads((d / "check.json").read_text())["rows"]}
    assert checks["mean rate (req/s)"] == pytest.approx(rows["mean rate (req/s)"]["generated"], rel=1e-3)


def test_notebooks_are_built_from_their_sources_without_outputs():
    done = subprocess.run([sys.executable, str(NOTEBOOKS / "make.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    books = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert len(books) == 4
    for p in books:
        nb = json.loads(p.read_text())
        for cell in nb["cells"]:
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, p.name


def documented_columns() -> set[str]:
    text = (REPO / "docs" / "formats.md").read_text()
    names = set(re.findall(r"`([a-z][a-z0-9_]*)`", text))
    return names


def test_notebooks_read_only_documented_columns():
    documented = documented_columns()
    for src in sorted((NOTEBOOKS / "src").glob("*.py")):
        code = src.read_text()
        # Names the notebook makes itself (aliases, dict keys, DuckDB AS) are its own.
        own = set(re.findall(r'alias\(f?"([a-z_{}0-9\[\]:*]+)"\)', code))
        own |= set(re.findall(r'"([a-z_0-9]+)":', code)) | set(re.findall(r"AS ([a-z_0-9]+)", code))
        used = set(re.findall(r'pl\.col\("([a-z_0-9]+)"\)', code))
        used |= set(re.findall(r'\["([a-z_0-9]+)"\]', code))
        used |= set(re.findall(r'group_by\("([a-z_0-9]+)"', code))
        unknown = {c for c in used if c not in documented and c not in own}
        # summary.json keys read in notebooks are documented in docs/analyze.md.
        analyze = (REPO / "docs" / "analyze.md").read_text()
        unknown = {c for c in unknown if f"`{c}`" not in analyze and c not in analyze}
        assert not unknown, f"{src.name} reads undocumented columns: {sorted(unknown)}"
