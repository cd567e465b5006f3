"""Keeps generated tables in the docs current: `python docs/sync.py [--check]`.

A page (README.md, docs/*.md) holds a generated file's text between

    <!-- include: docs/figures/maml_paper_table.md -->
    ...
    <!-- end include -->

This script rewrites every such block from the file it names (the file a study or
benchmark writes); with `--check` it only reports stale blocks and exits 1 (a test
runs it, so a table in the docs can never drift from what produced it).
"""

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(<!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S
)


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def synced(text: str) -> str:
    """`text` with every include block holding its file's current text."""

    def fill(match: re.Match) -> str:
        path = REPO / match["path"]
        if not path.is_file():
            raise SystemExit(f"{match['path']} is included in the docs but missing")
        return match[1] + path.read_text().rstrip("\n") + "\n" + match[4]

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()
        fresh = synced(text)
        if fresh != text:
            stale.append(page.relative_to(REPO))
            if not args.check:
                page.write_text(fresh)
    if args.check and stale:
        print(f"stale includes in {', '.join(map(str, stale))}: python docs/sync.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
