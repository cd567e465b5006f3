"""`python -m metalearn.data <dataset> [--from PATH] [--root DIR] [--url-base URL]`."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from metalearn.data import DATASETS
from metalearn.data.root import ENV_VAR, DataError, default_data_root


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per data set, all with the same options."""
    parser = argparse.ArgumentParser(
        prog="python -m metalearn.data",
        description="Prepare a data set once in the data root: --root, else "
        f"${ENV_VAR}, else $XDG_CACHE_HOME/metalearn or ~/.cache/metalearn.",
    )
    datasets = parser.add_subparsers(
        dest="dataset", required=True, metavar="DATASET", title="datasets"
    )
    for name, prepare in DATASETS.items():
        summary = (prepare.__doc__ or "").strip().splitlines()[0]
        command = datasets.add_parser(name, help=summary, description=summary)
        command.add_argument(
            "--from",
            dest="source",
            type=Path,
            metavar="PATH",
            help="import a local copy instead of downloading: a folder with the "
            "official zips or their unpacked folders, or a prepared .npz",
        )
        command.add_argument("--root", type=Path, metavar="DIR", help="data root")
        command.add_argument(
            "--url-base",
            metavar="URL",
            help="download from this mirror, not the source",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Prepares the data set named in `argv`; returns the exit code (2: failed)."""
    args = build_parser().parse_args(argv)
    root = (args.root or default_data_root()).expanduser().absolute()
    try:
        path = DATASETS[args.dataset](root, source=args.source, url_base=args.url_base)
    except (DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        return 130
    print(
        f"{args.dataset} is ready in {path}. Use it with `python train.py "
        f"task={args.dataset} data.root={root}` (or set {ENV_VAR}={root})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
