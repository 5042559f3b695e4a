# %% [markdown]
# # A synthetic workload against its source
#
# `reprise synth check` compares a generated workload with the trace it was fitted to (rate,
# burstiness, lengths, prefixes, sessions) and says pass or fail per figure. This notebook
# shows the same comparison as plots, and recomputes the headline figures itself.
#
# **Inputs**: the source trace, the generated workload, and the check's JSON:
#
# ```sh
# reprise synth fit traces/azure-conv-2023.parquet -o azure.json
# reprise synth gen azure.json -o x2.parquet --scale 2 --seed 1
# reprise synth check traces/azure-conv-2023.parquet x2.parquet --scale 2 --json > check.json
# ```

# %%
# Paths: point these at your own files (or set the environment variables).
import os
from pathlib import Path

REPO = Path(os.environ.get("REPRISE_REPO", Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
SOURCE = Path(os.environ.get("REPRISE_SOURCE", REPO / "traces" / "azure-conv-2023.parquet"))
GENERATED = Path(os.environ.get("REPRISE_GENERATED", REPO / "x2.parquet"))
CHECK = Path(os.environ.get("REPRISE_CHECK", REPO / "check.json"))
SCALE = float(os.environ.get("REPRISE_SCALE", "2"))

# %%
import json

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", matplotlib.get_backend()))
import matplotlib.pyplot as plt
import numpy as np
import polars as pl


def load(p: Path) -> pl.DataFrame:
    return pl.read_parquet(str(p / "*.parquet") if p.is_dir() else str(p)).sort("arrival")


def seconds(df: pl.DataFrame) -> np.ndarray:
    return (df["arrival"] - df["arrival"].min()).dt.total_microseconds().to_numpy() / 1e6


src, gen = load(SOURCE), load(GENERATED)
ts, tg = seconds(src), seconds(gen)
figures = {
    "mean rate (req/s)": (len(ts) / ts[-1] * SCALE, len(tg) / tg[-1]),
    "inter-arrival CV": tuple(np.diff(t).std() / np.diff(t).mean() for t in (ts, tg)),
}
pl.DataFrame([{"figure": k, "expected": v[0], "generated": v[1]} for k, v in figures.items()])

# %% [markdown]
# ## Rate over time and lengths

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
for name, t, scale in [("source x scale", ts, SCALE), ("generated", tg, 1.0)]:
    counts = np.bincount((t // 60).astype(int))
    axes[0].plot(np.arange(len(counts)), counts / 60 * scale, label=name)
axes[0].set_xlabel("minute")
axes[0].set_ylabel("req/s")
axes[0].legend()
for ax, column in zip(axes[1:], ["input_tokens", "output_tokens"]):
    for name, df in [("source", src), ("generated", gen)]:
        v = np.sort(df[column].drop_nulls().to_numpy())
        ax.plot(v, np.arange(len(v)) / max(len(v) - 1, 1), label=name)
    ax.set_xscale("log")
    ax.set_xlabel(column)
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The check's figures

# %%
check = json.loads(CHECK.read_text()) if CHECK.exists() else None
if check:
    rows = pl.DataFrame(check["rows"]).with_columns(pl.col("expected").cast(pl.Float64), pl.col("generated").cast(pl.Float64))
    plot = rows.filter(pl.col("expected").is_not_null() & (pl.col("expected") != 0))
    fig, ax = plt.subplots(figsize=(8, 0.35 * plot.height + 1))
    ratio = (plot["generated"] / plot["expected"]).to_numpy()
    ax.barh(plot["metric"].to_list(), ratio, color=["tab:gray" if p is None else "tab:green" if p else "tab:red" for p in plot["pass"]])
    ax.axvline(1.0, color="grey")
    ax.set_xlabel("generated / expected")
    plt.show()
    by_metric = {r["metric"]: r for r in check["rows"]}
    # This notebook's own figures agree with the check's.
    for name, (expected, generated) in figures.items():
        r = by_metric[name]
        assert abs(generated - r["generated"]) <= 1e-3 * abs(r["generated"]), (name, generated, r)
    judged = [r for r in check["rows"] if r["pass"] is not None]
    print(f"{sum(r['pass'] for r in judged)} of {len(judged)} judged figures pass")
print("CHECKS " + json.dumps({k: v[1] for k, v in figures.items()}))
