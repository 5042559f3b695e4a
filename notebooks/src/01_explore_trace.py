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
print("CHECKS " + json.dumps({"requests": trace.height, "inter_arrival_cv": cv, "prefix_block_hit_share": hit_share}))
