"""Run every benchmark that can run here; write benchmarks/results.md and results.png.

Each benchmark compares qchan with the raw client or the standard library in
the same run and prints markdown tables; this runner keeps those tables as
they are, and draws every (ratio, target) pair it finds in them on one chart.

Run: `python benchmarks/run_all.py [--quick]` (or `make bench`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (file, arguments, arguments with --quick, what it needs)
BENCHES: list[tuple[str, list[str], list[str], str]] = [
    (
        "bench_chan.py",
        ["--items", "200000", "--repeat", "3"],
        ["--items", "50000", "--repeat", "1"],
        "nothing",
    ),
    (
        "bench_embedded.py",
        ["--items", "100000", "--repeat", "2"],
        ["--items", "20000", "--repeat", "1", "--no-rss"],
        "nothing",
    ),
    (
        "bench_rabbitmq.py",
        ["--messages", "20000"],
        ["--messages", "3000"],
        "RabbitMQ on 127.0.0.1:5672",
    ),
    (
        "bench_redis.py",
        ["--messages", "20000", "--repeat", "3"],
        ["--messages", "3000", "--repeat", "1"],
        "Redis on 127.0.0.1:6379",
    ),
    (
        "bench_postgres.py",
        ["--messages", "20000", "--repeat", "3"],
        ["--messages", "3000", "--repeat", "1"],
        "PostgreSQL on 127.0.0.1:5432 (database test)",
    ),
    (
        "bench_relay.py",
        ["--messages", "20000", "--repeat", "3"],
        ["--messages", "3000", "--repeat", "1"],
        "PostgreSQL on 127.0.0.1:5432 (database test); Redis on :6379; RabbitMQ on :5672",
    ),
    (
        "bench_sqs.py",
        ["--messages", "2000"],
        ["--messages", "300", "--repeat", "1"],
        "moto (started by the benchmark)",
    ),
    (
        "bench_kafka.py",
        ["--messages", "50000"],
        ["--messages", "5000", "--repeat", "1"],
        "librdkafka's mock cluster (started by the benchmark)",
    ),
    ("bench_serve.py", ["--repeat", "5"], ["--messages", "5000", "--repeat", "1"], "nothing"),
    (
        "bench_serve.py",
        ["--broker", "rabbitmq", "--messages", "20000", "--repeat", "3"],
        ["--broker", "rabbitmq", "--messages", "3000", "--repeat", "1"],
        "RabbitMQ on 127.0.0.1:5672",
    ),
    (
        "bench_serve.py",
        ["--broker", "kafka", "--messages", "30000", "--repeat", "3"],
        ["--broker", "kafka", "--messages", "3000", "--repeat", "1"],
        "librdkafka's mock cluster (started by the benchmark)",
    ),
    (
        "bench_peers.py",
        ["--messages", "20000", "--slow", "3000", "--repeat", "3", "--rss", "100000", "500000"],
        ["--messages", "3000", "--slow", "500", "--repeat", "1", "--rss", "20000", "100000"],
        "RabbitMQ on 127.0.0.1:5672; kombu and faststream (the `bench` extra); "
        "starts the mock Kafka cluster and moto",
    ),
]

# A target: ">= 3x" (a ratio, higher is better), "<= 1.10x" or "< 1%" (lower is better).
_TARGET = re.compile(r"(>=|≥|<=|≤|<)\s*(\d+(?:\.\d+)?)\s*(x|%)")
# A measured value: "0.85x" (a ratio) or "0.32%" (a share, of a core say).
_RATIO = re.compile(r"(?<![\d.≥=><])(\d+\.\d+)\s*(?:x|%)")

Pair = tuple[str, float, float, bool]  # label, measured, target, higher is better


def _higher(op: str) -> bool:
    """True for a target that a larger value meets (>=, ≥), False for <, <=, ≤."""
    return op in (">=", "≥")


def met(pair: Pair) -> bool:
    _, value, target, higher = pair
    return value >= target if higher else value <= target


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower())) - {"vs", "x", "and", "the", "target"}


def ratio_pairs(text: str, bench: str) -> list[Pair]:
    """(label, measured, target, higher is better) for every table cell that states a target.

    A target sits in the ratio's own cell ("**7.70x** (target >= 3x)"), or in a
    target column after it; when that column names several targets (">= 3x
    confirm-per-msg and >= 0.5x no-confirm"), each goes with the ratio column
    whose header shares the most words with it. A target with `<`, `<=` or `≤`
    ("< 1%" of a core, "<= 1.10x" growth) is met at or below it.
    """
    pairs: list[Pair] = []
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if set("".join(cells)) <= set("-: "):
            continue
        if not header:
            header = cells
            continue
        label = cells[0] + "".join(
            f", {c}" for h, c in zip(header, cells, strict=False) if h.lower() == "policy"
        )
        found: dict[int, float] = {}  # column -> ratio, in this row
        for i, cell in enumerate(cells):
            targets = list(_TARGET.finditer(cell))
            ratios = _RATIO.findall(_TARGET.sub("", cell))
            column = header[i] if i < len(header) else ""
            if targets and ratios:
                t = targets[0]
                pairs.append((f"{label} ({column})", float(ratios[0]), float(t[2]), _higher(t[1])))
            elif targets and found:
                for m in targets:
                    said = _words(cell[m.end() :].split(" and ")[0])
                    best = max(found, key=lambda j: (len(said & _words(header[j])), j))
                    pairs.append(
                        (f"{label} ({header[best]})", found[best], float(m[2]), _higher(m[1]))
                    )
            if ratios:
                found[i] = float(ratios[0])
    return [(f"{bench}: {lbl}", r, t, h) for lbl, r, t, h in pairs]


def chart(pairs: list[Pair], path: Path) -> None:
    import matplotlib  # only `make bench` needs it (the dev extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [p[0] for p in pairs]
    ratios = [p[1] for p in pairs]
    targets = [p[2] for p in pairs]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(pairs) + 1.5))
    ys = range(len(pairs))
    colors = ["tab:green" if met(p) else "tab:red" for p in pairs]
    ax.barh(list(ys), ratios, color=colors)
    ax.scatter(targets, list(ys), marker="|", s=400, color="black", label="target", zorder=3)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(
        "qchan / baseline, same run; or, lower is better: % of a core, growth (log scale; "
        "green: target met)"
    )
    ax.legend(loc="lower right")
    ax.set_title("qchan benchmarks: ratio to the raw client or the standard library")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(name: str, args: list[str]) -> str:
    """What the chart calls a benchmark's rows: its name, and its broker when it has several."""
    label = name.removeprefix("bench_").removesuffix(".py")
    if "--broker" in args:
        label += " " + args[args.index("--broker") + 1]
    return label


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small runs, to check the runner")
    ap.add_argument("--only", nargs="*", help="run only these benchmark files")
    args = ap.parse_args(argv)
    sections: list[str] = []
    pairs: list[Pair] = []
    for name, full, quick, needs in BENCHES:
        if args.only and name not in args.only:
            continue
        script = HERE / name
        cmd = [sys.executable, str(script), *(quick if args.quick else full)]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if not script.exists():
            sections.append(f"## {name}\n\nnot present in this checkout.\n")
            continue
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
        took = time.monotonic() - started
        shown = " ".join(["python", f"benchmarks/{name}", *cmd[2:]])
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            sections.append(
                f"## {name}\n\n`{shown}` failed (exit {proc.returncode}; needs {needs}):\n\n"
                f"```\n{tail}\n```\n"
            )
            continue
        sections.append(f"## {name}\n\n`{shown}` ({took:.0f} s)\n\n{proc.stdout.strip()}\n")
        pairs.extend(ratio_pairs(proc.stdout, _label(name, full)))
    n_met = sum(met(p) for p in pairs)
    head = [
        "# qchan benchmark results",
        "",
        f"Written by `make bench` on {datetime.date.today()}: Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}. Every "
        "figure comes from one run in which qchan and its baseline (the raw client or the "
        "standard library) were measured side by side; absolute rates vary with the load "
        "on the machine, the ratios much less.",
        "",
        f"Targets met: {n_met} of {len(pairs)}."
        + (
            " Missed: "
            + "; ".join(
                f"{p[0]} {p[1]:.2f} (target {'>=' if p[3] else '<='} {p[2]})"
                for p in pairs
                if not met(p)
            )
            + "."
            if n_met < len(pairs)
            else ""
        ),
        "",
        "![ratios](results.png)",
        "",
    ]
    (HERE / "results.md").write_text("\n".join(head) + "\n" + "\n".join(sections))
    if pairs:
        chart(pairs, HERE / "results.png")
    print(f"wrote {HERE / 'results.md'} ({n_met}/{len(pairs)} targets met)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
