"""Run every benchmark: JSON per benchmark, PNG plots, and a Markdown summary.

    python -m bench.run_all [--quick] [--out bench/results] [--img docs/img]
                            [--only memo,disk,remote,roundtrips,stampede,memory,import,
                                    throughput,torch,torch_remote]
                            [--max-load 1.0 --wait 900] [--torch-python PATH] [--report-only]

Writes ``<out>/<benchmark>.json`` for each benchmark, ``<out>/summary.md`` (also printed:
the Markdown for docs/benchmarks.md, whose image links are relative to docs/), and PNG
figures into ``--img`` (default ``docs/img``; with ``--quick`` the default is
``<out>/img``, so a smoke run never overwrites the committed figures). One private
redis-server on a free port serves every remote benchmark.

Benchmarks 2 (``bench_torch.py``) and 10 (``bench_torch_remote.py``) run under
``--torch-python`` (default: the ``BENCH_TORCH_PYTHON`` variable, else
``/tmp/venv-torch/bin/python`` if present, else this interpreter), because torch is not
a dependency of the project; without torch they are reported as skipped. Plots need
matplotlib (the ``bench`` extra); without it they are skipped with a message and
everything else still runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import IMG_DIR, RESULTS_DIR, ROOT, Options, fmt, load_average, save

GROUPS = (
    "memo",
    "disk",
    "remote",
    "roundtrips",
    "stampede",
    "memory",
    "import",
    "throughput",
    "torch",
    "torch_remote",
)

# JSON name -> (number, title); the order of the summary. The numbers follow the list of
# figures issue 12 asks for.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "memo_hit": (
        "1",
        "Memo hit (`record`, `get`) vs `functools.lru_cache(typed=True)`, every argument shape",
    ),
    "torch_memo": (
        "2",
        "Memo hit with torch installed (default schema) vs `lru_cache` and torch's `Memoizer`",
    ),
    "disk_hit": (
        "3",
        "Disk hit vs `open().read()` + `msgpack.unpackb`; first call in a fresh process",
    ),
    "remote_hit": ("4", "Remote hit (distinct keys, disk backfill on) vs raw redis-py `GET`"),
    "miss_insert": ("5", "Miss + insert vs raw `GET` + `SET NX`"),
    "prefetch": ("5", "Prefetch: `get_many` of 1,000 entries vs 1,000 `get`"),
    "roundtrips": ("6", "dcache global miss: Redis round trips, and time vs raw `GET` + `SET NX`"),
    "stampede": ("6", "Stampede: wake-up latency of waiters on one missing key (dcache)"),
    "memory": ("7", "Memory: bytes per memo entry, RSS over repeated gets, page faults per hit"),
    "import_time": ("8", "`import redis_cache` in a fresh interpreter"),
    "throughput": ("9", "Throughput at 90 % hits, 1-8 spawned processes, vs raw redis-py"),
    "torch_remote": ("10", "`redis_cache.torch` vs torch's built-in Redis remote cache"),
}
GROUP_OF = {
    "memo_hit": "memo",
    "torch_memo": "torch",
    "disk_hit": "disk",
    "remote_hit": "remote",
    "miss_insert": "remote",
    "prefetch": "remote",
    "roundtrips": "roundtrips",
    "stampede": "stampede",
    "memory": "memory",
    "import_time": "import",
    "throughput": "throughput",
    "torch_remote": "torch_remote",
}
# Groups that run under the torch interpreter: group -> (module, JSON name).
TORCH_GROUPS = {
    "torch": ("bench_torch", "torch_memo"),
    "torch_remote": ("bench_torch_remote", "torch_remote"),
}
SERVER_GROUPS = {"remote", "roundtrips", "stampede", "memory", "throughput"}


# --------------------------------------------------------------------------- running


def wait_for_quiet(max_load: float | None, wait: float) -> None:
    """Wait (bounded) until the 1-minute load average is at most ``max_load``."""
    if max_load is None:
        return
    deadline = time.monotonic() + wait
    while (load := load_average()[0]) > max_load and time.monotonic() < deadline:
        print(f"  load {load:.2f} > {max_load:g}: waiting...", flush=True)
        time.sleep(15)


def torch_python(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("BENCH_TORCH_PYTHON"):
        return os.environ["BENCH_TORCH_PYTHON"]
    default = Path("/tmp/venv-torch/bin/python")
    return str(default) if default.exists() else sys.executable


def run_torch(opts: Options, python: str, group: str) -> None:
    module, name = TORCH_GROUPS[group]
    cmd = [python, "-m", f"bench.{module}", "--out", str(opts.out)]
    if opts.quick:
        cmd.append("--quick")
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "ignore"
    try:
        done = subprocess.run(
            cmd, env=env, cwd=ROOT, timeout=900 if opts.quick else 3600, check=False
        )
        problem = None if done.returncode == 0 else f"{module}.py exited {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = f"{module}.py could not run: {exc}"
    if problem is not None:
        print(f"skipped: {problem}")
        save(name, {"skipped": problem, "python": python}, opts.out)


def run_groups(opts: Options, groups: list[str], args: argparse.Namespace) -> None:
    import importlib  # noqa: PLC0415

    from bench.bench_remote import bench_server  # noqa: PLC0415

    modules = {
        "memo": "bench_memo",
        "disk": "bench_disk",
        "remote": "bench_remote",
        "roundtrips": "bench_roundtrips",
        "stampede": "bench_stampede",
        "memory": "bench_memory",
        "import": "bench_import",
        "throughput": "bench_throughput",
    }
    needs_server = SERVER_GROUPS & set(groups)
    with bench_server() if needs_server else _nothing() as server:
        for group in groups:
            wait_for_quiet(args.max_load, args.wait)
            started = time.monotonic()
            print(f"\n# {group} (load {load_average()[0]:.2f})", flush=True)
            if group in TORCH_GROUPS:
                run_torch(opts, torch_python(args.torch_python), group)
            else:
                module = importlib.import_module(f"bench.{modules[group]}")
                if group in SERVER_GROUPS:
                    module.run(opts, server)
                else:
                    module.run(opts)
            print(f"  ({group}: {time.monotonic() - started:.0f} s)", flush=True)
            if server is not None:
                server.client().flushdb()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --------------------------------------------------------------------------- reporting


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    results = {}
    for name in BENCHMARKS:
        path = out / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    return results


def _cell(t: dict[str, Any]) -> str:
    unit = t.get("unit", "ns")
    return f"{fmt(t['median'], unit)} ({fmt(t['p10'], unit)} .. {fmt(t['p90'], unit)})"


def _ratio(row: dict[str, Any]) -> str:
    return f"{row['ratio']:.2f}x ({row['ratio_p10']:.2f} .. {row['ratio_p90']:.2f})"


def _verdict(row: dict[str, Any]) -> str:
    return {"ok": "ok", "MISSED": "**MISSED**"}.get(row["verdict"], "info")


def _rows_table(number: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        ratio = _ratio(row)
        if row.get("target_on") == "candidate":
            ratio += " (the target is on the candidate itself)"
        lines.append(
            f"| {number} | {row['benchmark']} | {row['case']} | {row['baseline']['name']}: "
            f"{_cell(row['baseline'])} | {row['candidate']['name']}: {_cell(row['candidate'])} "
            f"| {row.get('ratio_label', 'ratio')} {ratio} | {row['target_text']} "
            f"| {_verdict(row)} |"
        )
    return lines


def _roundtrips_section(results: dict[str, dict[str, Any]]) -> list[str]:
    rt = results.get("roundtrips", {}).get("data")
    if not rt:
        return []
    lines = ["### 6. Round trips per call (steady state)", ""]
    for path_name, info in rt.get("per_path", {}).items():
        commands = ", ".join(f"{k} {v:g}" for k, v in info["commands_per_call"].items())
        lines.append(
            f"- {path_name}: {info['round_trips_median']:g} round trips "
            f"({info['round_trips_min']}..{info['round_trips_max']}) counted on the client; "
            f"server commands per call (INFO commandstats, Lua scripts' inner calls "
            f"included): {commands}"
        )
    return [*lines, ""]


def _stampede_section(results: dict[str, dict[str, Any]]) -> list[str]:
    st = results.get("stampede", {}).get("data")
    if not st or "latencies_ms" not in st:
        return []
    phases = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in q.items())
        for name, q in st.get("dcache_phases_ms", {}).items()
    )
    return [
        "### 6. Stampede",
        "",
        f"{st['waiters']} waiters + 1 computing process, {st['rounds']} rounds each for "
        "dcache and for the raw protocol, alternating; p50/p99 over all waiters of all "
        "rounds, spread p10 .. p90 over 1,000 bootstrap resamples of the rounds. Late "
        f"arrivals (called after the commit, excluded): {st.get('late_arrivals')}. Problems: "
        f"{'; '.join(st['problems']) or 'none'} (every round computed exactly once). "
        f"Where dcache's wake-up time goes (ms): {phases or 'not instrumented'}.",
        "",
    ]


def _import_section(results: dict[str, dict[str, Any]]) -> list[str]:
    loaded = results.get("import_time", {}).get("data", {}).get("loaded")
    if not loaded:
        return []
    return [
        "### 8. What `import redis_cache` loads",
        "",
        f"Top-level modules new after the import ({len(loaded)}): {', '.join(loaded)}.",
        "",
    ]


def _throughput_section(results: dict[str, dict[str, Any]]) -> list[str]:
    tp = results.get("throughput", {}).get("data")
    if not tp:
        return []
    lines = [
        "### 9. Throughput (aggregate ops/s)",
        "",
        f"{tp['repeats']} repeats of {tp['seconds']:g} s windows per mode and process count; "
        f"90 % of operations read one of {tp.get('keys', 1000):,} pre-populated 10 KiB keys, "
        "10 % a new key. (a) realistic fcache in the steady state: memo and disk on, every "
        "hit key read once before the window (untimed), so hits are memo hits and each miss "
        "computes and inserts; (b) memo cleared before every call and nothing copied to disk, "
        "so every operation takes the remote path (the operations of raw, plus fcache's work).",
        "",
        "| processes | raw redis-py | fcache (a) memo on | (a) ÷ raw | fcache (b) cold "
        "| (b) ÷ raw |",
        "|---|---|---|---|---|---|",
    ]
    series = tp["series"]
    ratio_rows = {(r["benchmark"], r["case"]): r for r in tp["rows"]}
    for p in sorted(series["raw"], key=int):
        a = ratio_rows.get(("throughput (a) realistic, memo on", f"{p} proc"))
        b = ratio_rows.get(("throughput (b) cold", f"{p} proc"))
        lines.append(
            f"| {p} | {_cell(series['raw'][p])} | {_cell(series['fcache'][p])} | "
            f"{_ratio(a) if a else '—'} | {_cell(series['fcache-cold'][p])} | "
            f"{_ratio(b) if b else '—'} |"
        )
    parts = []
    for key, m in sorted(tp.get("hit_mix", {}).items()):
        total = max(1, m["hits"] + m["misses"])
        parts.append(
            f"{key}: memo {m['memo'] / total:.0%}, disk {m['disk'] / total:.0%}, "
            f"remote {m['remote'] / total:.0%}, miss {m['misses'] / total:.0%}"
        )
    if parts:
        lines += ["", "Where fcache's operations were served: " + "; ".join(parts) + "."]
    return [*lines, ""]


def _torch_section(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    memo = results.get("torch_memo", {}).get("data", {})
    if memo.get("torch"):
        lines += [f"Benchmark 2 ran with torch {memo['torch']} ({memo.get('python')}).", ""]
    remote = results.get("torch_remote", {}).get("data", {})
    if not remote.get("torch"):
        return lines
    lines += [
        f"### 10. redis_cache.torch vs torch's Redis cache (torch {remote['torch']})",
        "",
        "Stored bytes (STRLEN / MEMORY USAGE, torch's backend vs ours): "
        + "; ".join(
            f"{b['entries']}: {b['torch_strlen']:,} / {b['ours_strlen']:,} B "
            f"({b['torch_memory_usage']:,} / {b['ours_memory_usage']:,} B)"
            for b in remote.get("stored_bytes", [])
        )
        + ".",
        "",
        "Memory kept after a put and repeated gets (MiB, tracemalloc): "
        + ", ".join(f"{k} {v:.1f}" for k, v in remote.get("kept_memory_mib", {}).items())
        + ". A pickle planted in Redis ran: "
        + ", ".join(f"{k}: {v}" for k, v in remote.get("planted_pickle_ran", {}).items())
        + ".",
        "",
        "| backend | fault | first get | next gets (median) |",
        "|---|---|---|---|",
    ]
    for f in remote.get("faults", []):
        first = f.get("first_get_s")
        first_text = f"{first:.3f} s" if isinstance(first, float) else str(first)
        following = f.get("next_gets_median_s")
        next_text = f"{following:.3f} s" if isinstance(following, float) else "—"
        lines.append(
            f"| {f['backend']} | {f['fault']} | {first_text} ({f.get('first_get', '')}) "
            f"| {next_text} {', '.join(f.get('next_gets', []))} |"
        )
    return [*lines, ""]


def summary_markdown(
    results: dict[str, dict[str, Any]],
    command: str,
    img_links: dict[str, str],
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> str:
    env = next((r["environment"] for r in results.values() if "environment" in r), {})
    lines = [
        "## Results",
        "",
        f"Produced by `{command}` on {env.get('time', '?')}: Python {env.get('python')}, "
        f"redis-py {env.get('redis-py')} (hiredis {env.get('hiredis')}), redis-server "
        f"{env.get('redis-server')}, {env.get('cpus')} x {env.get('cpu', '?')}; commit "
        f"{env.get('commit')}, library sources sha256 {env.get('library_sha256')} (the tree "
        f"as measured). Load average (1/5/15 min) of this invocation before "
        f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.2f}' for x in load_after)}.",
        "",
        "When each benchmark was saved (1-minute load average then; the machine has 2 cores "
        "and is shared): "
        + "; ".join(
            f"{name} {r['environment'].get('time', '?')[11:16]} "
            f"({r['environment'].get('loadavg', [math.nan])[0]:.2f})"
            for name, r in results.items()
            if "environment" in r
        )
        + ".",
        "",
        "Every ratio is candidate ÷ baseline measured in the same run, timed alternately "
        "repeat by repeat; figures are medians with p10 .. p90 over repeats (ratios: median "
        'and p10 .. p90 of the per-repeat ratios). "speed-up" and "ops/s ratio" rows: '
        "higher is better; all others: lower is better. Target verdicts: ok / **MISSED**; "
        "rows without a target are informational.",
        "",
        "| # | benchmark | case | baseline: median (p10 .. p90) | candidate: median (p10 .. p90) "
        "| ratio (p10 .. p90) | target | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    skipped = []
    for name, (number, _title) in BENCHMARKS.items():
        data = results.get(name, {}).get("data", {})
        if "skipped" in data:
            skipped.append((number, name, data["skipped"]))
            lines.append(f"| {number} | {name} | — | — | — | — | — | skipped: {data['skipped']} |")
            continue
        lines += _rows_table(number, data.get("rows", []))
    lines.append("")
    missing = [n for n in BENCHMARKS if n not in results]
    if missing:
        lines += [f"Not run: {', '.join(missing)}.", ""]

    lines += _roundtrips_section(results)
    lines += _stampede_section(results)
    lines += _import_section(results)
    lines += _throughput_section(results)
    lines += _torch_section(results)

    missed = [
        (BENCHMARKS[name][0], row)
        for name in BENCHMARKS
        for row in results.get(name, {}).get("data", {}).get("rows", [])
        if row["verdict"] == "MISSED"
    ]
    lines += ["### Targets missed", ""]
    if missed:
        for number, row in missed:
            value = (
                row["ratio"]
                if row.get("target_on", "ratio") == "ratio"
                else row["candidate"]["median"]
            )
            lines.append(
                f"- {number}. {row['benchmark']}, {row['case']}: {value:.2f} "
                f"(target {row['target_text']})"
            )
    else:
        lines.append("- none")
    lines.append("")
    if img_links:
        lines += ["### Figures", ""]
        for name, link in img_links.items():
            lines.append(f"![{name}]({link})")
            lines.append("")
    return "\n".join(lines)


def make_plots(results: dict[str, dict[str, Any]], img: Path, command: str) -> dict[str, str]:
    """PNG figures; returns name -> link relative to docs/ (or the file path)."""
    try:
        from bench import plots  # noqa: PLC0415
    except ImportError as exc:
        print(f"plots skipped: {exc} (pip install -e '.[bench]')")
        return {}
    made: dict[str, Path] = {}
    for name, (number, title) in BENCHMARKS.items():
        data = results.get(name, {}).get("data", {})
        rows = [r for r in data.get("rows", []) if math.isfinite(r["ratio"])]
        if name == "throughput" and rows:
            made[name] = plots.throughput(
                data["series"], rows, command, img / f"bench-{number}-throughput.png", number
            )
            continue
        if name == "stampede" and "latencies_ms" in data:
            made[f"{name}-latency"] = plots.stampede(
                data["latencies_ms"],
                data["waiters"],
                data["rounds"],
                command,
                img / f"bench-{number}-stampede-latency.png",
                number,
            )
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(row["benchmark"], []).append(row)
        for i, (bench, group) in enumerate(groups.items()):
            suffix = "" if len(groups) == 1 else f"-{i + 1}"
            path = img / f"bench-{number}-{name.replace('_', '-')}{suffix}.png"
            plain = title.replace("`", "")
            made[f"{name}{suffix}"] = plots.ratio_bars(
                f"{number}. {plain}: {bench}", group, command, path
            )
    links = {}
    docs = ROOT / "docs"
    for name, path in made.items():
        try:
            links[name] = str(path.resolve().relative_to(docs.resolve()))
        except ValueError:
            links[name] = str(path)
    return links


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--img", type=Path, default=None)
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma list of {GROUPS}")
    parser.add_argument(
        "--max-load",
        type=float,
        default=None,
        help="before each group, wait while the 1-min load is above this",
    )
    parser.add_argument("--wait", type=float, default=900.0, help="longest such wait (s)")
    parser.add_argument("--torch-python", default=None)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only rebuild summary.md and the plots from <out>/*.json",
    )
    args = parser.parse_args()
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown --only groups: {', '.join(sorted(unknown))}")
    out = args.out.resolve()
    img = args.img if args.img is not None else (out / "img" if args.quick else IMG_DIR)
    opts = Options(quick=args.quick, out=out, img=img)
    command = "python -m bench.run_all" + (" --quick" if args.quick else "")
    load_before = load_average()
    if not args.report_only:
        print(f"{command}: groups {', '.join(groups)}; load {load_before}", flush=True)
        started = time.monotonic()
        run_groups(opts, groups, args)
        print(f"\nall benchmarks: {time.monotonic() - started:.0f} s", flush=True)
    load_after = load_average()
    results = load_results(out)
    links = make_plots(results, img, command)
    text = summary_markdown(results, command, links, load_before, load_after)
    (out / "summary.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nwrote {out / 'summary.md'}; JSON in {out}; figures in {img}")


if __name__ == "__main__":
    main()
