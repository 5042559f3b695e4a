# %% [markdown]
# # A replay run
#
# Latency CDFs and percentiles per step, throughput against the load and the knee, and the
# GPU/server series against latency — from a run directory, with polars and DuckDB.
#
# **Inputs**: a run directory of `reprise replay` — `requests.parquet` (result/1), and when
# monitored `server.parquet` (server/1) and `gpu.parquet` (gpu/1) — analysed by
# `reprise analyze RUN` (which writes `summary.json`). For example:
#
# ```sh
# reprise replay --target sim --ramp concurrency:1,4,16,64 --step-duration 20 --scrape target --out runs/ramp
# reprise analyze runs/ramp
# ```
#
# Metric definitions: `docs/metrics.md`; columns: `docs/formats.md`.

# %%
# Paths: point this at your own run (or set REPRISE_RUN).
import os
from pathlib import Path

REPO = Path(os.environ.get("REPRISE_REPO", Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
RUN = Path(os.environ.get("REPRISE_RUN", REPO / "runs" / "demo"))

# %%
import json

import duckdb
import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", matplotlib.get_backend()))
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

requests = pl.read_parquet(RUN / "requests.parquet")
summary = json.loads((RUN / "summary.json").read_text()) if (RUN / "summary.json").exists() else None
# Measured requests: warm-up excluded; latencies count successful ones (HTTP 2xx, no error).
measured = requests.filter(pl.col("phase") != "warmup")
ok = measured.filter(pl.col("status").is_between(200, 299) & pl.col("error_kind").is_null())
print(f"{requests.height} rows, {measured.height} measured, {ok.height} successful")

# %% [markdown]
# ## Percentiles per step
#
# Linear interpolation between order statistics (numpy's default), as `reprise analyze`.

# %%
def pcts(df: pl.DataFrame, column: str) -> list[pl.Expr]:
    v = pl.col(column).cast(pl.Float64) / 1000.0
    return [v.quantile(q, interpolation="linear").alias(f"{column[:-3]}_p{int(q * 100)}_ms") for q in (0.5, 0.9, 0.99)]


steps = (
    ok.group_by("phase")
    .agg(
        pl.col("step_value").first(),
        pl.len().alias("ok"),
        *pcts(ok, "ttft_us"),
        *pcts(ok, "tpot_us"),
        *pcts(ok, "e2e_us"),
        ((pl.col("done").max() - pl.col("sent").min()).dt.total_nanoseconds() / 1e9).alias("span_s"),
    )
    .with_columns((pl.col("ok") / pl.col("span_s")).alias("req_per_s"))
    .sort("step_value", nulls_last=True)
)
steps

# %%
# The same with DuckDB, straight from the file.
duckdb.sql(
    f"""
    SELECT phase, count(*) AS ok,
           quantile_cont(ttft_us, 0.99) / 1000 AS ttft_p99_ms
    FROM read_parquet('{RUN / "requests.parquet"}')
    WHERE phase <> 'warmup' AND status BETWEEN 200 AND 299 AND error_kind IS NULL
    GROUP BY phase ORDER BY min(scheduled)
    """
).pl()

# %% [markdown]
# ## Latency CDFs
#
# The percentile axis is stretched in the tail (−log10(1 − p)) so P99 and P99.9 are visible.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
tail = lambda p: -np.log10(1 - np.minimum(p, 0.99999))
for ax, column in zip(axes, ["ttft_us", "e2e_us"]):
    for phase, group in ok.group_by("phase", maintain_order=True):
        v = np.sort(group[column].drop_nulls().to_numpy() / 1000.0)
        if len(v) < 2:
            continue
        p = np.arange(len(v)) / (len(v) - 1)
        ax.plot(v, tail(p), label=str(phase[0]))
    ax.set_xscale("log")
    ax.set_yticks([tail(x) for x in (0, 0.5, 0.9, 0.99, 0.999)], ["0", "50", "90", "99", "99.9"])
    ax.set_xlabel(f"{column[:-3]} (ms)")
    ax.set_ylabel("percentile")
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Throughput against the load, and the knee

# %%
s = steps.filter(pl.col("step_value").is_not_null())
if s.height >= 2:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(s["step_value"], s["req_per_s"], "o-", label="req/s")
    ax2 = ax.twinx()
    ax2.plot(s["step_value"], s["ttft_p99_ms"], "s--", color="tab:red", label="P99 TTFT")
    ax.set_xlabel("load (concurrency or rate)")
    ax.set_ylabel("req/s")
    ax2.set_ylabel("P99 TTFT (ms)")
    knee = summary and summary.get("knee")
    if knee:
        ax.axvline(knee["knee_value"], color="grey", ls=":")
        print(knee["conclusion"])
    plt.show()
else:
    print("not a ramp: one step")

# %% [markdown]
# ## GPU and server series against latency
#
# Server gauges (long format: one row per series per scrape) and GPU samples, in 2-second
# bins beside the requests sent in each bin.

# %%
bin_us = 2_000_000
t0 = measured["scheduled"].min()
to_bin = lambda c: ((pl.col(c) - t0).dt.total_microseconds() // bin_us).alias("bin")
lat = ok.with_columns(to_bin("sent")).group_by("bin").agg(
    (pl.col("ttft_us").quantile(0.99, interpolation="linear") / 1000).alias("ttft_p99_ms"),
    pl.len().alias("sent_ok"),
)
series = lat
if (RUN / "server.parquet").exists():
    server = pl.read_parquet(RUN / "server.parquet")
    gauges = (
        server.filter(pl.col("metric").is_in(["vllm:num_requests_waiting", "vllm:num_requests_running"]))
        .group_by("time", "metric")
        .agg(pl.col("value").sum())
        .with_columns(to_bin("time"))
        .group_by("bin")
        .agg(
            pl.col("value").filter(pl.col("metric") == "vllm:num_requests_waiting").mean().alias("waiting"),
            pl.col("value").filter(pl.col("metric") == "vllm:num_requests_running").mean().alias("running"),
        )
    )
    series = series.join(gauges, on="bin", how="left")
if (RUN / "gpu.parquet").exists():
    gpu = pl.read_parquet(RUN / "gpu.parquet")
    series = series.join(
        gpu.with_columns(to_bin("time")).group_by("bin").agg(pl.col("util_pct").mean().alias("gpu_util_pct")),
        on="bin",
        how="left",
    )
series = series.sort("bin")
for column in ["waiting", "running", "gpu_util_pct"]:
    if column in series.columns:
        pair = series.select("ttft_p99_ms", column).drop_nulls()
        if pair.height >= 5 and pair[column].std() > 0:
            r = pair.select(pl.corr("ttft_p99_ms", column)).item()
            print(f"P99 TTFT ~ {column}: Pearson r = {r:.2f} over {pair.height} bins")
if "waiting" in series.columns:
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(series["bin"] * 2, series["ttft_p99_ms"], label="P99 TTFT (ms)")
    ax2 = ax.twinx()
    ax2.plot(series["bin"] * 2, series["waiting"], color="tab:brown", ls="--", label="waiting")
    ax.set_xlabel("s")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    plt.show()

# %% [markdown]
# ## The same figures as `reprise analyze`
#
# The overall P99 TTFT and the request count computed here must equal `summary.json`'s.

# %%
p99 = ok.select((pl.col("ttft_us").cast(pl.Float64) / 1000).quantile(0.99, interpolation="linear")).item()
checks = {"ttft_p99_ms": p99, "measured": measured.height}
if summary:
    assert abs(p99 - summary["overall"]["latency"]["ttft"]["p99"]) < 1e-6, (p99, summary["overall"]["latency"]["ttft"])
    assert measured.height == summary["overall"]["requests"]
    print("matches reprise analyze: P99 TTFT", round(p99, 3), "ms over", measured.height, "requests")
print("CHECKS " + json.dumps(checks))
