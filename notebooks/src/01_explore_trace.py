# %% [markdown]
# # Explore a trace
#
# Arrival rate over time, burstiness at several window sizes, prompt and output length
# distributions and their correlation, and prefix sharing — for any trace/1 file.
#
# **Inputs**: a trace/1 Parquet file (or a directory of parts), e.g. the shipped sample
# `traces/azure-conv-2023.parquet`, one from `reprise import azure|mooncake|burstgpt ...`,
# or one recorded by `reprise record`. Columns: `docs/formats.md` (trace/1).

# %%
# Paths: point these at your own data (or set the environment variables).
import os
from pathlib import Path

REPO = Path(os.environ.get("REPRISE_REPO", Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
TRACE = Path(os.environ.get("REPRISE_TRACE", REPO / "traces" / "azure-conv-2023.parquet"))

# %%
import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", matplotlib.get_backend()))
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

source = str(TRACE / "*.parquet") if TRACE.is_dir() else str(TRACE)
trace = pl.read_parquet(source).sort("arrival")
span_s = (trace["arrival"].max() - trace["arrival"].min()).total_seconds()
print(f"{trace.height} requests over {span_s:.0f} s: {trace.height / span_s:.2f} req/s")
trace.select("request_id", "arrival", "model", "input_tokens", "output_tokens").head()

# %% [markdown]
# ## Arrival rate over time

# %%
rate = (
    trace.group_by_dynamic("arrival", every="10s")
    .agg(pl.len().alias("requests"))
    .with_columns((pl.col("requests") / 10.0).alias("req_per_s"))
)
fig, ax = plt.subplots(figsize=(10, 3))
ax.plot(rate["arrival"].to_list(), rate["req_per_s"].to_list(), lw=1)
ax.set_ylabel("req/s (10 s windows)")
ax.set_title("Arrival rate")
plt.show()

# %% [markdown]
# ## Burstiness
#
# The coefficient of variation (CV) of inter-arrival times is 1 for a Poisson process; the
# index of dispersion (variance / mean of counts per window) is 1 for Poisson at every
# window size and grows with the window for bursty, non-stationary traffic.

# %%
t = (trace["arrival"] - trace["arrival"].min()).dt.total_microseconds().to_numpy() / 1e6
gaps = np.diff(t)
cv = gaps.std() / gaps.mean()
rows = []
for w in [1, 10, 60, 600]:
    if span_s < 2 * w:
        continue
    counts = np.bincount((t // w).astype(int))[: int(span_s // w)]
    rows.append({"window_s": w, "index_of_dispersion": counts.var() / counts.mean()})
burst = pl.DataFrame(rows)
print(f"inter-arrival CV: {cv:.3f}")
burst

# %% [markdown]
# ## Prompt and output lengths

# %%
lengths = trace.filter(pl.col("input_tokens").is_not_null() & pl.col("output_tokens").is_not_null())
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
for ax, column in zip(axes[:2], ["input_tokens", "output_tokens"]):
    v = lengths[column].to_numpy()
    ax.hist(v, bins=np.logspace(0, np.log10(max(v.max(), 2)), 50))
    ax.set_xscale("log")
    ax.set_title(f"{column}: p50 {np.percentile(v, 50):.0f}, p99 {np.percentile(v, 99):.0f}")
axes[2].scatter(lengths["input_tokens"].to_numpy(), lengths["output_tokens"].to_numpy(), s=2, alpha=0.3)
axes[2].set_xscale("log")
axes[2].set_yscale("log")
axes[2].set_xlabel("input tokens")
axes[2].set_ylabel("output tokens")
plt.tight_layout()
plt.show()
corr = lengths.select(
    pl.corr("input_tokens", "output_tokens", method="pearson").alias("pearson"),
    pl.corr("input_tokens", "output_tokens", method="spearman").alias("spearman"),
)
corr

# %% [markdown]
# ## Prefix sharing
#
# `prefix_hashes` holds a salted chained hash per block of prompt tokens: equal i-th hashes
# mean equal first i blocks. The share of blocks seen before in the trace is what a prefix
# cache could serve (Mooncake traces and `reprise record` captures carry them; the Azure
# traces do not).

# %%
import json

with_prefix = trace.filter(pl.col("prefix_hashes").is_not_null() & (pl.col("prefix_hashes").list.len() > 0))
hit_share = None
if with_prefix.height == 0:
    print("this trace records no prefix hashes")
else:
    seen: set[int] = set()
    hit = total = 0
    for hashes in with_prefix["prefix_hashes"].to_list():
        for h in hashes:
            total += 1
            if h in seen:
                hit += 1
            seen.add(h)
    first = with_prefix.select(pl.col("prefix_hashes").list.first().alias("h")).group_by("h").len()
    hit_share = hit / total
    print(f"{hit_share:.1%} of {total} prompt blocks were seen earlier in the trace")
    print(f"{first.height} distinct first blocks over {with_prefix.height} requests")

# %% [markdown]
# ## Sessions (conversations)
#
# Rows that share a `session_id` are the turns of one conversation (`turn`, from 1), each
# prompt holding the conversation so far. `think_us` is the user's think time: from the end
# of the previous turn's response to this turn's arrival (trace/1.1; `reprise import`
# derives it where the source records response times, e.g. BurstGPT's `Elapsed time`).
# `reprise replay` sends a later turn only after the previous answer plus this think time.

# %%
sessions = trace.filter(pl.col("session_id").is_not_null())
session_figures = {"sessions": 0}
if sessions.height == 0:
    print("this trace has no sessions")
else:
    if "turn" not in sessions.columns or sessions["turn"].null_count() > 0:
        # Files written before trace/1.1: turns in arrival order.
        sessions = sessions.with_columns(pl.col("arrival").rank("ordinal").over("session_id").cast(pl.UInt32).alias("turn"))
    if "think_us" not in sessions.columns:
        sessions = sessions.with_columns(pl.lit(None, dtype=pl.UInt64).alias("think_us"))
    per = sessions.group_by("session_id").agg(pl.len().alias("turns"))
    think_s = sessions["think_us"].drop_nulls().to_numpy() / 1e6
    growth = (
        sessions.sort("session_id", "turn")
        .with_columns(
            (pl.col("input_tokens").cast(pl.Int64)
             - pl.col("input_tokens").shift(1).over("session_id").cast(pl.Int64)
             - pl.col("output_tokens").shift(1).over("session_id").cast(pl.Int64)).alias("new_tokens")
        )["new_tokens"].drop_nulls().to_numpy()
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    axes[0].hist(per["turns"].to_numpy(), bins=range(1, int(per["turns"].max()) + 2))
    axes[0].set_title(f"turns per session (mean {per['turns'].mean():.2f})")
    if len(think_s):
        axes[1].hist(think_s, bins=50)
        axes[1].set_title(f"think time s (p50 {np.percentile(think_s, 50):.1f})")
    else:
        axes[1].set_title("think time unknown (no response times)")
    by_turn = sessions.group_by("turn").agg(pl.col("input_tokens").median().alias("p50")).sort("turn")
    axes[2].plot(by_turn["turn"].to_list(), by_turn["p50"].to_list(), marker="o")
    axes[2].set_xlabel("turn")
    axes[2].set_title("prompt tokens by turn (p50): context growth")
    plt.tight_layout()
    plt.show()
    session_figures = {
        "sessions": per.height,
        "turns": sessions.height,
        "turns_mean": per["turns"].mean(),
        "think_s": sorted(think_s.tolist()),
        "new_tokens_p50": float(np.percentile(growth, 50)) if len(growth) else None,
    }
    print(session_figures)

# %%
print("CHECKS " + json.dumps({"requests": trace.height, "inter_arrival_cv": cv, "prefix_block_hit_share": hit_share, **session_figures}))
