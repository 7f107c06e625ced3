"""Seconds per test (setup + call + teardown) from a pytest `--durations=0` log -> tests/durations.json,
which conftest sums over the selected tests of each file to hand the longest files to pytest-xdist's
workers first (so no long file starts last, in either tier).

    pytest -n auto --dist loadfile --durations=0 --durations-min=0 -q > run.log
    python scripts/test_durations.py run.log [fast.log ...]   # a test in a later log takes its figure

Figures are one run on one machine: only their order matters. A shared export's cost lands on the
test that happened to build it."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

LINE = re.compile(r"^\s*([\d.]+)s (?:call|setup|teardown)\s+(tests/\S+)")


def main(logs: list[str]) -> None:
    seconds: Counter[str] = Counter()
    for log in logs:
        this: Counter[str] = Counter()
        if not Path(log).is_file():
            sys.exit(f"{log}: no such log file (write one with pytest --durations=0 --durations-min=0 > run.log)")
        for line in Path(log).read_text(errors="replace").splitlines():
            if m := LINE.match(line):
                this[m.group(2)] += float(m.group(1))
        if not this:
            sys.exit(f"{log}: no `--durations=0` lines (run pytest with --durations=0)")
        for test, s in this.items():
            seconds[test] = s
    out = Path(__file__).resolve().parents[1] / "tests" / "durations.json"
    out.write_text(json.dumps({f: round(s, 1) for f, s in seconds.most_common()}, indent=1) + "\n")
    print(f"{out}: {len(seconds)} tests, {sum(seconds.values()):.0f} s in all")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    main(sys.argv[1:])
