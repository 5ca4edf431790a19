"""The default-run tables of README.md and docs/results.md, copied from reports/results.md so that they
cannot go stale.

    .venv/bin/python docs/readme_tables.py           # rewrite the marked tables (after `make repro`)
    .venv/bin/python docs/readme_tables.py --check   # exit 1 if they differ (tests/test_readme.py runs this check)

A block in those pages between ``<!-- results.md: Table N -->`` and ``<!-- /results.md -->`` holds
Table N of ``reports/results.md`` (the markdown table that follows its ``**Table N.**`` caption),
the selected-model sentence after Table 1 included.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "README.md", ROOT / "docs" / "results.md")  # the pages holding marked blocks
BLOCK = re.compile(r"(<!-- results\.md: Table (\d+) -->\n)(.*?)(<!-- /results\.md -->)", re.S)


def report_table(results: str, number: int) -> str:
    """Table ``number`` of the report: its markdown rows (and, for Table 1, the selection sentence)."""
    caption = results.find(f"**Table {number}.**")
    if caption < 0:
        raise ValueError(f"reports/results.md has no Table {number}")
    lines = results[caption:].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    block = lines[start:end]
    if number == 1:
        block += [""] + [line for line in lines[end:] if line.startswith("The model selected")][:1]
    return "\n".join(block) + "\n"


def sync(readme: str, results: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + report_table(results, int(m.group(2))) + m.group(4), readme)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is stale")
    args = ap.parse_args(argv)
    results = (ROOT / "reports" / "results.md").read_text()
    stale = []
    for path in PAGES:
        text = path.read_text()
        new = sync(text, results)
        if new != text:
            stale.append(path.relative_to(ROOT).as_posix())
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"{', '.join(stale)}: default-run tables differ from reports/results.md: run docs/readme_tables.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
