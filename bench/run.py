"""Run the benchmarks under bench/ and tabulate every result in bench/results/README.md.

    bench/run.py                                   every bench/*.py (each has a main())
    bench/run.py registration_storm --agents 500   one of them, with its own options
    bench/run.py fanout --agents 50                a small fan-out (writes no result)

Each benchmark writes bench/results/<name>.json (rows as CONVENTIONS.md "Benchmarks"
describes); the table is rebuilt from all of them, so rows of benchmarks not run this
time stay in it.
"""

import importlib.util
import json
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COLUMNS = ("metric", "ours", "anchor", "anchor_value", "ratio", "target", "unit", "params",
           "date")
PREAMBLE = """\
# Benchmark results

Written by `bench/run.py` (`make bench`) from the `*.json` files beside this one; each
script's docstring says how it measures. `ratio` is ours/anchor when higher is better and
anchor/ours when lower is better: above 1 means we are ahead. `target` is the bar for
`ratio` when the anchor is another program, and the bar for `ours` (in `unit`) when the
anchor is "target". Absolute figures move from machine to machine; only ratios from one
run compare.
"""


def benchmarks():
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem != "run" and p.stem[0] != "_")


def load(name):
    sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location("bench_" + name, HERE / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(value):
    if value is None:
        return "—"
    if isinstance(value, dict):
        return "<br>".join("%s=%s" % (k, cell(v) if not isinstance(v, dict) else
                                      json.dumps(v, separators=(",", ":")))
                           for k, v in value.items())
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).replace("|", "\\|")


def write_table():
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        try:
            rows.extend(json.loads(path.read_text()))
        except ValueError as e:
            sys.stderr.write("bench: skipping %s: %s\n" % (path, e))
    lines = [PREAMBLE, "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for item in rows:
        lines.append("| " + " | ".join(cell(item.get(c)) for c in COLUMNS) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")
    return len(rows)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    known = benchmarks()
    names = []
    while argv and argv[0] in known:
        names.append(argv.pop(0))
    if argv and not argv[0].startswith("-"):
        sys.stderr.write("bench: unknown benchmark %r (have: %s)\n" % (argv[0], ", ".join(known)))
        return 2
    failed = []
    for name in names or known:
        sys.stderr.write("bench: running %s\n" % name)
        try:
            code = load(name).main(argv if names else [])
        except Exception:
            traceback.print_exc()
            code = 1
        if code:
            failed.append(name)
    count = write_table()
    sys.stderr.write("bench: %d rows in %s\n" % (count, RESULTS / "README.md"))
    if failed:
        sys.stderr.write("bench: failed: %s\n" % ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
