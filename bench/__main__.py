"""Run the benchmarks, print goals against figures and rewrite docs/performance.md.

``python -m bench`` runs everything (about 15 minutes); ``--quick`` runs small
sizes (about 2 minutes); ``--only NAME`` runs one benchmark and keeps the other
sections of the document as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from types import FrameType

from bench import Result, Row, fmt

DOC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "performance.md"
)
DATA_RE = re.compile(r"^<!-- bench-result (.*) -->$", re.M)
ORDER = ("footprint", "pull", "push", "detector", "cli", "store")
# Hard caps per benchmark, seconds: (full, quick).
CAPS = {
    "footprint": (240, 45),
    "pull": (480, 75),
    "push": (900, 120),
    "detector": (420, 60),
    "cli": (150, 45),
    "store": (300, 60),
}


def run_store(quick: bool) -> Result:
    """Run the store benchmark of bench/bench_store.py and turn its printout into a result."""
    from bench import bench_store

    entry = getattr(bench_store, "run", None)
    if callable(entry):
        found = entry(quick=quick)
        if isinstance(found, Result):
            return found
    out = io.StringIO()
    argv = sys.argv
    sys.argv = ["bench_store", *(["--tiny"] if quick else [])]
    try:
        with contextlib.redirect_stdout(out):
            bench_store.main()
    finally:
        sys.argv = argv
    result = Result("store", "History store", "-")
    parent = ""
    for line in out.getvalue().splitlines():
        label, _, value = line.rstrip().rpartition(" ")
        try:
            figure = float(value.replace(",", ""))
        except ValueError:
            if not line.startswith(" "):
                parent = line.strip().rstrip(":")
            continue
        if line.startswith(" ") and parent:
            label = f"{parent}: {label.strip()}"
        else:
            parent = ""
        result.rows.append(Row(label.strip(), figure))
    result.notes.append(
        "From `python -m bench.bench_store"
        + (" --tiny`" if quick else "`")
        + " (SQLite store: bytes per node-day, projected size, write throughput)."
    )
    return result


def benchmarks() -> dict[str, Callable[[bool], Result]]:
    """Return every benchmark's entry point by name, importing lazily."""

    def footprint(quick: bool) -> Result:
        from bench import footprint as module

        return module.run(quick)

    def pull(quick: bool) -> Result:
        from bench import pull as module

        return module.run(quick)

    def push(quick: bool) -> Result:
        from bench import push as module

        return module.run(quick)

    def detector(quick: bool) -> Result:
        from bench import detector_sim as module

        return module.run(quick)

    def cli(quick: bool) -> Result:
        from bench import cli_latency as module

        return module.run(quick)

    return {
        "footprint": footprint,
        "pull": pull,
        "push": push,
        "detector": detector,
        "cli": cli,
        "store": run_store,
    }


class Overtime(Exception):
    """A benchmark ran past its hard cap."""


@contextlib.contextmanager
def cap(seconds: int) -> Iterator[None]:
    """Raise Overtime in the main thread after ``seconds``; children stop via their finally."""

    def alarm(signum: int, frame: FrameType | None) -> None:
        raise Overtime(f"over its {seconds} s cap")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_one(name: str, quick: bool) -> Result:
    """Run one benchmark under its cap; a failure becomes a skipped result, not a crash."""
    entry = benchmarks()[name]
    started = time.perf_counter()
    print(f"== {name}{' (quick)' if quick else ''} ...", flush=True)
    try:
        with cap(CAPS[name][1 if quick else 0]):
            result = entry(quick)
    except Exception as e:
        traceback.print_exc()
        result = Result(name, name, "-", skipped=f"failed: {type(e).__name__}: {e}")
    result.seconds = time.perf_counter() - started
    skipped = f" — skipped: {result.skipped}" if result.skipped else ""
    print(f"   {name}: {result.seconds:.0f} s{skipped}", flush=True)
    return result


def machine() -> list[tuple[str, str]]:
    """Describe the machine the figures come from."""
    model = "unknown"
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="ascii", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as f:
        kib = int(f.readline().split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    rows = [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", model),
        ("memory", memory),
        ("Python", platform.python_version()),
        ("kernel", platform.release()),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]
    for tool, flag in (("prometheus", "--version"), ("prometheus-node-exporter", "--version")):
        path = shutil.which(tool)
        if path:
            done = subprocess.run([path, flag], capture_output=True, text=True, check=False)
            first = (done.stdout or done.stderr).splitlines()[:1]
            rows.append((tool, first[0] if first else "?"))
    return rows


def summary_lines(results: list[Result], goals_only: bool = True) -> list[str]:
    """Return the figures (only those with a goal, by default) as a markdown table."""
    lines = [
        "| benchmark | figure | pimon | anchor | ratio | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.title} | skipped: {r.skipped} | | | | | |")
            continue
        for row in r.rows:
            if goals_only and not row.goal:
                continue
            met = {True: "yes", False: "**no**", None: ""}[row.met]
            anchor = f"{fmt(row.anchor)} {row.unit}" if row.anchor is not None else "-"
            lines.append(
                f"| {r.title} | {row.metric} | {fmt(row.pimon)} {row.unit} "
                f"| {anchor} | {fmt(row.ratio)} | {row.goal} | {met} |"
            )
    return lines


def render(results: list[Result], command: str, when: str) -> str:
    """Return the whole docs/performance.md."""
    out = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Each benchmark measures "
        "pimon and its anchor in the same run, on the same shared machine, so ratios matter "
        "more than absolute figures.",
        "",
        f"Last run: {when}, `{command}`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine()),
        "",
        "## Goals against measured figures",
        "",
        *summary_lines(results),
        "",
    ]
    for r in results:
        out += [f"## {r.title}", ""]
        out.append(f"Anchor: {r.anchor}. Measured {r.measured}; took {r.seconds:.0f} s.")
        out.append("")
        if r.skipped:
            out += [f"Skipped: {r.skipped}", ""]
        elif r.rows:
            out += [*summary_lines([r], goals_only=False), ""]
        for table in r.tables:
            out += [table, ""]
        out += [f"- {note}" for note in r.notes]
        out += ["", f"<!-- bench-result {json.dumps(r.as_json())} -->", ""]
    return "\n".join(out)


def kept_results(path: str) -> dict[str, Result]:
    """Return the results stored in an earlier docs/performance.md."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return {}
    kept = {}
    for match in DATA_RE.finditer(text):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            result = Result.from_json(json.loads(match.group(1)))
            kept[result.name] = result
    return kept


def print_summary(results: list[Result]) -> None:
    """Print the goals table to the terminal."""
    width = 60
    print(f"\n{'benchmark / figure':<{width}} {'pimon':>12} {'anchor':>12} {'ratio':>8}  goal")
    for r in results:
        if r.skipped:
            print(f"{r.title:<{width}} skipped: {r.skipped}")
            continue
        for row in r.rows:
            mark = {True: "met", False: "MISSED", None: ""}[row.met]
            label = f"{r.name}: {row.metric}"
            if len(label) > width:
                print(label)
                label = ""
            print(
                f"{label:<{width}} {fmt(row.pimon):>12} {fmt(row.anchor):>12} "
                f"{fmt(row.ratio):>8}  {row.goal} {mark}"
            )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the benchmarks, print and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    parser.add_argument("--only", choices=ORDER, action="append", help="run only NAME (repeatable)")
    parser.add_argument(
        "--doc", default=DOC, help="where to write the results (docs/performance.md)"
    )
    args = parser.parse_args(argv)
    names = [n for n in ORDER if not args.only or n in args.only]
    command = "python -m bench" + (" --quick" if args.quick else "")
    command += "".join(f" --only {n}" for n in args.only or [])
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fresh = {name: run_one(name, args.quick) for name in names}
    for result in fresh.values():
        result.measured = f"{when} by `{command}`"
    kept = kept_results(args.doc) if args.only else {}
    results = [fresh.get(n) or kept[n] for n in ORDER if n in fresh or n in kept]
    print_summary(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.doc)), exist_ok=True)
    with open(args.doc, "w", encoding="utf-8") as f:
        f.write(render(results, command, when))
    print(f"\nwrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
