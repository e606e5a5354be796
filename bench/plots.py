"""PNG figures from the benchmark JSON (matplotlib, Agg backend: no display needed).

Each figure is titled with what it shows and the command that produced it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

OK, MISSED, INFO = "#3a923a", "#c0392b", "#7f8c8d"


def _color(verdict: str) -> str:
    return {"ok": OK, "MISSED": MISSED}.get(verdict, INFO)


def _finish(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ratio_bars(title: str, rows: Sequence[dict[str, Any]], command: str, path: Path) -> Path:
    """One bar per row (its checked figure), p10..p90 whiskers, a dashed line per target."""
    labels, values, lows, highs, colors = [], [], [], [], []
    for row in rows:
        on_ratio = row.get("target_on", "ratio") == "ratio"
        if on_ratio:
            value, lo, hi = row["ratio"], row["ratio_p10"], row["ratio_p90"]
        else:
            cand = row["candidate"]
            value, lo, hi = cand["median"], cand["p10"], cand["p90"]
        labels.append(row["case"])
        values.append(value)
        lows.append(max(0.0, value - min(lo, value)))
        highs.append(max(0.0, max(hi, value) - value))
        colors.append(_color(row["verdict"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2.5), 4.2))
    xs = range(len(rows))
    ax.bar(xs, values, color=colors, yerr=[lows, highs], capsize=4, width=0.6)
    for x, v in zip(xs, values, strict=True):
        ax.annotate(f"{v:.2f}", (x, v), textcoords="offset points", xytext=(10, 3), fontsize=8)
    targets = {(row["target"], row.get("goal", "max")) for row in rows if row.get("target")}
    for target, goal in sorted(targets):
        sign = "≤" if goal == "max" else "≥"
        ax.axhline(target, color="black", linestyle="--", linewidth=1)
        ax.annotate(
            f"target {sign} {target:g}",
            (len(rows) - 0.5, target),
            ha="right",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(list(xs))
    ax.set_xticklabels(
        labels,
        rotation=20 if len(rows) > 4 else 0,
        ha="right" if len(rows) > 4 else "center",
        fontsize=8,
    )
    first = rows[0]
    if first.get("target_on", "ratio") == "ratio":
        ax.set_ylabel(f"{first.get('ratio_label', 'ratio')} (candidate vs baseline)")
    else:
        ax.set_ylabel(first["candidate"]["unit"])
    if any(v > 0 for v in values) and max(values) / max(min(v for v in values if v > 0), 1e-9) > 50:
        ax.set_yscale("log")
    ax.set_title(f"{title}\nmedian, p10..p90 whiskers — {command}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, path)


def throughput(
    series: dict[str, dict[str, dict[str, Any]]],
    rows: Sequence[dict[str, Any]],
    command: str,
    path: Path,
    number: str = "9",
) -> Path:
    """Aggregate ops/s against worker processes per mode, and the ratios to raw."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    styles = {
        "raw": ("raw redis-py", "#34495e"),
        "fcache": ("fcache (a) memo on", "#2980b9"),
        "fcache-cold": ("fcache (b) memo cleared, no disk copy", "#e67e22"),
    }
    for mode, by_p in series.items():
        ps = sorted(by_p, key=int)
        xs = [int(p) for p in ps]
        med = [by_p[p]["median"] for p in ps]
        lo = [m - by_p[p]["p10"] for p, m in zip(ps, med, strict=True)]
        hi = [by_p[p]["p90"] - m for p, m in zip(ps, med, strict=True)]
        label, color = styles.get(mode, (mode, None))
        left.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=4, label=label, color=color)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("worker processes (spawned; 2 CPU cores)")
    left.set_ylabel("aggregate ops/s (90% hits, 10 KiB values)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")
    left.set_title("ops/s, median and p10..p90 over repeats", fontsize=9)
    for bench, color in (("(a)", "#2980b9"), ("(b)", "#e67e22")):
        picked = [r for r in rows if bench in r["benchmark"]]
        xs = [int(r["case"].split()[0]) for r in picked]
        med = [r["ratio"] for r in picked]
        lo = [m - r["ratio_p10"] for r, m in zip(picked, med, strict=True)]
        hi = [r["ratio_p90"] - m for r, m in zip(picked, med, strict=True)]
        right.errorbar(
            xs,
            med,
            yerr=[lo, hi],
            marker="o",
            capsize=4,
            color=color,
            label=f"fcache {bench} ops/s ÷ raw ops/s",
        )
    right.axhline(1.0, color="black", linestyle=":", linewidth=1)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("worker processes")
    right.set_ylabel("ratio to raw redis-py (higher is better)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    right.set_title("throughput ratio per process count", fontsize=9)
    fig.suptitle(f"{number}. Throughput vs worker processes — {command}", fontsize=10)
    return _finish(fig, path)


def stampede(
    latencies: dict[str, list[float]],
    waiters: int,
    rounds: int,
    command: str,
    path: Path,
    number: str = "6",
) -> Path:
    """CDF and histogram of the wake-up latency of every waiter of every round."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"raw": "#34495e", "dcache": "#c0392b"}
    names = {"raw": "raw redis-py (BRPOPLPUSH + GET)", "dcache": "dcache.record"}
    finite = [x for xs in latencies.values() for x in xs if math.isfinite(x)]
    top = max(finite) if finite else 1.0
    for kind in ("raw", "dcache"):
        xs = sorted(latencies.get(kind, []))
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        left.step(xs, ys, where="post", color=colors[kind], label=names[kind])
        for q, style in ((0.5, "--"), (0.99, ":")):
            v = xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)]
            left.axvline(v, color=colors[kind], linestyle=style, linewidth=0.8)
        right.hist(xs, bins=40, range=(0, top), alpha=0.6, color=colors[kind], label=names[kind])
    left.set_xlabel("ms from the writer's commit to the waiter's return")
    left.set_ylabel("fraction of waiters")
    left.set_title("CDF (dashed: p50, dotted: p99)", fontsize=9)
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3)
    right.set_xlabel("ms")
    right.set_ylabel("waiters")
    right.set_title("histogram", fontsize=9)
    right.legend(fontsize=8)
    fig.suptitle(
        f"{number}. Stampede wake-up latency, {waiters} waiters x {rounds} rounds, "
        f"0.3 s computation — {command}",
        fontsize=10,
    )
    return _finish(fig, path)
