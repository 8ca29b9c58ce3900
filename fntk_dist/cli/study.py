"""`fntk sweep` and `fntk report`: width-scaling studies (see docs/STUDY.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from . import EXIT_INTERRUPTED, EXIT_USAGE


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the sweep and report subcommands to fntk's parser."""
    s = sub.add_parser("sweep", help="run a grid of trials on Ray; writes DIR/results.parquet")
    s.add_argument("config", help="sweep YAML: name, base, grid (see configs/sweep_smoke.yaml)")
    s.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="override the base config, e.g. train.steps=50")
    s.add_argument("--out", type=Path,
                   help="sweep folder (default: runs/NAME); rerunning into it resumes")
    s.add_argument("--address", metavar="ADDR",
                   help="existing Ray cluster (default: RAY_ADDRESS, else embedded)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    r = sub.add_parser("report", help="plots and a Markdown report of a sweep folder")
    r.add_argument("dir", type=Path, help="a sweep folder (holding results.parquet)")
    r.add_argument("--out", type=Path, help="report folder (default: DIR/report)")


def run(args: argparse.Namespace, rest: list[str]) -> int:
    """Run `fntk sweep` or `fntk report`; bad input prints one line and returns 2."""
    try:
        if args.command == "sweep":
            from ..study import load_sweep, run_sweep

            sweep, trials = load_sweep(args.config, [*args.overrides, *rest])
            out = args.out or Path("runs") / sweep.name
            if out.exists() and not out.is_dir():
                raise UserError(f"--out: {out} exists and is not a folder")
            result = run_sweep(sweep, trials, out, args.address, progress=not args.quiet)
            print(json.dumps(result, indent=1))
            return 0
        if rest:
            raise UserError(f"report takes no overrides, got {' '.join(rest)}")
        from ..study import write_report

        path = write_report(args.dir, args.out)
        print(f"report: {path}")
        return 0
    except UserError as err:  # config, cluster and argument errors name their key
        print(f"fntk: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the finished trials are whole on disk
        print("fntk: interrupted; finished trials are kept: rerun the same command to run the "
              "rest", file=sys.stderr)
        return EXIT_INTERRUPTED
