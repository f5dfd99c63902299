"""Draws docs/contention.png from docs/contention.csv.

The CSV comes from `CONTENTION_CSV=docs/contention.csv cargo bench --bench contention`.
Needs matplotlib (`pip install matplotlib`); CI does not run this script.
"""

import csv
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = pathlib.Path(__file__).parent
source = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else here / "contention.csv"
target = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else here / "contention.png"

series = {}
with source.open() as f:
    for row in csv.DictReader(f):
        s = series.setdefault(row["strategy"], ([], [], []))
        s[0].append(int(row["clients"]))
        s[1].append(float(row["writes"]))
        s[2].append(float(row["completion_ms"]))

labels = {
    "no_backoff": "no backoff",
    "none": "exponential, no jitter",
    "equal": "equal jitter",
    "full": "full jitter (default)",
    "decorrelated": "decorrelated jitter",
}

fig, (calls, time) = plt.subplots(1, 2, figsize=(12, 4.8))
for name, (clients, writes, completion) in series.items():
    calls.plot(clients, writes, marker=".", label=labels.get(name, name))
    time.plot(clients, completion, marker=".", label=labels.get(name, name))
calls.set_title("Work: mean writes until every client succeeded")
calls.set_xlabel("contending clients")
calls.set_ylabel("writes (mean of 100 trials)")
calls.set_yscale("log")
time.set_title("Completion: time until the last client succeeded")
time.set_xlabel("contending clients")
time.set_ylabel("virtual ms (mean of 100 trials)")
time.set_yscale("log")
for ax in (calls, time):
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
fig.suptitle(
    "One row under optimistic concurrency; base 5 ms, cap 2 s, hops |N(10 ms, 2 ms)| "
    "(AWS 'Exponential Backoff And Jitter' model)",
    fontsize="medium",
)
fig.tight_layout()
fig.savefig(target, dpi=110)
print(f"wrote {target}")
