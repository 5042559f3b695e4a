# %% [markdown]
# # Compare runs: A/B and scaling
#
# Two runs side by side (a new model, quantisation, batching setting or version against the
# baseline): percentiles, the relative change with a bootstrap 95% interval, CDFs overlaid.
# Then a series of runs at 1, 2, 4... replicas: does throughput scale linearly?
#
# **Inputs**: run directories of `reprise replay`, each analysed by `reprise analyze RUN`
# (for `summary.json`). For example:
#
# ```sh
# reprise replay traces/azure-conv-2023.parquet --target http://base:8000 --limit 2000 --out runs/base
# reprise replay traces/azure-conv-2023.parquet --target http://new:8000 --limit 2000 --out runs/new
# reprise analyze runs/base runs/new
# reprise compare runs/base runs/new --fail-on ttft.p99=10%   # the same comparison, as a CI gate
# ```

# %%
# Paths: point these at your own runs (or set the environment variables; SCALING is
# "DIR:REPLICAS,DIR:REPLICAS,...").
import os
from pathlib import Path

REPO = Path(os.environ.get("REPRISE_REPO", Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
BASE = Path(os.environ.get("REPRISE_BASE", REPO / "runs" / "base"))
NEW = Path(os.environ.get("REPRISE_NEW", REPO / "runs" / "new"))
SCALING = [
    (Path(d), float(n))
    for d, n in (x.rsplit(":", 1) for x in os.environ.get("REPRISE_SCALING", "").split(",") if x)
]

# %%
import json

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", matplotlib.get_backend()))
import matplotlib.pyplot as plt
import numpy as np
import polars as pl


def successful(run: Path) -> pl.DataFrame:
    df = pl.read_parquet(run / "requests.parquet").filter(pl.col("phase") != "warmup")
    return df.filter(pl.col("status").is_between(200, 299) & pl.col("error_kind").is_null())


def throughput(run: Path) -> float:
    df = pl.read_parquet(run / "requests.parquet").filter(pl.col("phase") != "warmup")
    # In ns, as the analyzer (a Python timedelta would round to microseconds).
    span = df.select((pl.col("done").max() - pl.col("sent").min()).dt.total_nanoseconds()).item() / 1e9
    ok = df.filter(pl.col("status").is_between(200, 299) & pl.col("error_kind").is_null()).height
    return ok / span


base, new = successful(BASE), successful(NEW)
print(f"base {BASE.name}: {base.height} ok; new {NEW.name}: {new.height} ok")

# %% [markdown]
# ## Side by side, with bootstrap intervals
#
# Each run's successful requests resampled with replacement (1,000 rounds); the change is
# significant when its 95% interval excludes zero.

# %%
rng = np.random.default_rng(1)


def ci(a: np.ndarray, b: np.ndarray, q: float, rounds: int = 1000) -> tuple[float, float]:
    changes = []
    for _ in range(rounds):
        x = np.percentile(rng.choice(a, len(a)), q * 100)
        y = np.percentile(rng.choice(b, len(b)), q * 100)
        changes.append((y - x) / x if x else np.nan)
    return tuple(np.nanpercentile(changes, [2.5, 97.5]))


rows = []
for metric in ["ttft_us", "tpot_us", "e2e_us"]:
    a = base[metric].drop_nulls().cast(pl.Float64).to_numpy() / 1000
    b = new[metric].drop_nulls().cast(pl.Float64).to_numpy() / 1000
    if len(a) < 2 or len(b) < 2:
        continue
    for q in (0.5, 0.99):
        x, y = np.percentile(a, q * 100), np.percentile(b, q * 100)
        lo, hi = ci(a, b, q)
        rows.append(
            {
                "metric": f"{metric[:-3]} p{int(q * 100)} (ms)",
                "base": x,
                "new": y,
                "change": (y - x) / x,
                "ci_low": lo,
                "ci_high": hi,
                "significant": not (lo <= 0 <= hi),
            }
        )
table = pl.DataFrame(rows)
table

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, df in [("base", base), ("new", new)]:
    v = np.sort(df["ttft_us"].drop_nulls().to_numpy() / 1000.0)
    ax.plot(v, np.arange(len(v)) / max(len(v) - 1, 1), label=name)
ax.set_xscale("log")
ax.set_xlabel("TTFT (ms)")
ax.set_ylabel("share of requests")
ax.legend()
plt.show()

# %% [markdown]
# ## Scaling efficiency
#
# Throughput per run against linear scaling from the first run of the series.

# %%
if SCALING:
    first_tp, first_n = throughput(SCALING[0][0]), SCALING[0][1]
    scaling = pl.DataFrame(
        [
            {
                "run": d.name,
                "replicas": n,
                "req_per_s": throughput(d),
                "efficiency": throughput(d) / (first_tp * n / first_n),
            }
            for d, n in SCALING
        ]
    )
    print(scaling)
    plt.figure(figsize=(5, 3.5))
    plt.plot(scaling["replicas"], scaling["req_per_s"], "o-", label="measured")
    plt.plot(scaling["replicas"], first_tp * scaling["replicas"] / first_n, "--", label="linear")
    plt.xlabel("replicas")
    plt.ylabel("req/s")
    plt.legend()
    plt.show()
else:
    print("no scaling series given (REPRISE_SCALING)")

# %% [markdown]
# ## The same figures as `reprise analyze`

# %%
checks = {}
for name, run in [("base", BASE), ("new", NEW)]:
    tp = throughput(run)
    checks[f"{name}_req_per_s"] = tp
    summary_file = run / "summary.json"
    if summary_file.exists():
        expected = json.loads(summary_file.read_text())["overall"]["request_throughput"]
        assert abs(tp - expected) < 1e-6 * max(1.0, expected), (name, tp, expected)
        print(f"{name}: {tp:.3f} req/s, as reprise analyze")
print("CHECKS " + json.dumps(checks))
