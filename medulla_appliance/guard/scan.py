"""Run one filter over a log file, like ``fail2ban-regex``: what would count, per address.

    python -m medulla_appliance.guard.scan /etc/medulla/guard.d/filters/sshd.ini auth.log
    python -m medulla_appliance.guard.scan --json FILTER.ini LOG     # {"address": count}

The file is read the way the daemon reads it (``FileFollower`` slices, ``Filter.scan``),
so this is also what ``bench/guard.py`` times against fail2ban.
"""

import argparse
import collections
import json
import os
import sys
import time

from ..core.config import ConfigError
from .config import load_filter
from .sources import FileFollower


def scan_file(flt, path):
    """(lines read, Counter of failures per address) for the whole file."""
    counts = collections.Counter()

    def on_lines(lines):
        for hit, _line in flt.scan(lines):
            counts[hit.host] += 1

    follower = FileFollower(path, on_lines, start="beginning")
    try:
        while follower.poll():
            pass
        follower._flush_partial()  # the last line, even without its newline
    finally:
        follower.close()
    return follower.lines_read, counts


def main(argv=None):
    parser = argparse.ArgumentParser(prog="medulla-guard-scan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("filter", help="a filter file (guard.d/filters/NAME.ini)")
    parser.add_argument("log", help="the log file to read")
    parser.add_argument("--json", action="store_true", help="print {address: failures}")
    args = parser.parse_args(argv)
    name = os.path.basename(args.filter).removesuffix(".ini")
    try:
        flt = load_filter(name, args.filter)
    except ConfigError as exc:
        sys.stderr.write("bad filter: %s\n" % exc)
        return 78
    started = time.perf_counter()
    try:
        lines, counts = scan_file(flt, args.log)
    except OSError as exc:
        sys.stderr.write("cannot read %s: %s\n" % (args.log, exc.strerror))
        return 1
    elapsed = time.perf_counter() - started
    if args.json:
        json.dump(dict(sorted(counts.items())), sys.stdout)
        sys.stdout.write("\n")
    else:
        for address, count in counts.most_common():
            sys.stdout.write("%8d %s\n" % (count, address))
    sys.stderr.write("%d lines, %d failures from %d addresses in %.2f s (%d lines/s)\n" % (
        lines, sum(counts.values()), len(counts), elapsed, lines / max(elapsed, 1e-9)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
