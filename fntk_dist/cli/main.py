"""The `fntk` command: train, gram and regress, each from a YAML config plus key=value
overrides."""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import signal
import sys
import warnings
from pathlib import Path

from ..errors import UserError
from . import EXIT_INTERRUPTED, EXIT_USAGE
from .study import add_parsers as add_study_parsers
from .study import run as run_study

# Storage that refuses writes: a full disk or quota, a read-only mount, no permission.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (what schedulers send) stops a job as Ctrl-C does."""
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fntk", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in [("train", "train a net; writes a run folder"),
                           ("gram", "compute a net's NTK Gram and its spectrum"),
                           ("regress", "kernel regression with the net's exact NTK (CG, "
                                       "Nystrom-preconditioned, H never stored)")]:
        s = sub.add_parser(name, help=helptext)
        s.add_argument("config", help="YAML config (see configs/)")
        s.add_argument("overrides", nargs="*", metavar="key.sub=value",
                       help="override config values, e.g. train.steps=50 model.m=8192")
        s.add_argument("--out", type=Path, help="run folder (default: runs/NAME-TIMESTAMP)")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
        s.add_argument("--workers", type=int, metavar="N",
                       help="run on Ray with N workers (gram: a grid of actors, --grid, into a "
                            "tile store; regress: a grid of actors answering the mat-vecs; "
                            "train: Ray Train + DeepSpeed on the dist.width x dist.data mesh)")
        s.add_argument("--address", metavar="ADDR",
                       help="existing Ray cluster (default: RAY_ADDRESS, else embedded)")
        if name == "gram":
            s.add_argument("--plan", action="store_true",
                           help="print the predicted time of each actor grid shape for the "
                                "config's data, tile and workers (default: this host's cores); "
                                "runs nothing")
            s.add_argument("--tile", type=int, metavar="T", help="rows per tile")
        if name in ("gram", "regress"):
            s.add_argument("--grid", type=_grid, metavar="WxR",
                           help="W width shards x R row groups of actors, W*R = --workers "
                                "(which it sets when unset; default: gram the shape of least "
                                "predicted time, see --plan; regress W = --workers)")
        if name == "train":
            s.add_argument("--resume", action="store_true",
                           help="continue a stopped run in --out from its last checkpoint "
                                "(train.checkpoint_every)")
            s.add_argument("--verbose", action="store_true",
                           help="with --workers: stream every worker's output (Ray, DeepSpeed) "
                                "here instead of into RUN/logs")
    add_study_parsers(sub)
    return p


def _grid(text: str) -> list[int]:
    """--grid WxR (2x4) as [W, R]; the config's validation checks the numbers."""
    try:
        width, rows = text.lower().split("x")
        return [int(width), int(rows)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxR, e.g. 2x4") from None


def _overrides(args: argparse.Namespace) -> list[str]:
    """--workers/--address/--tile/--grid are shorthands for config overrides (validated
    alike)."""
    flags = {"dist.workers": getattr(args, "workers", None),
             "dist.address": getattr(args, "address", None),
             "gram.tile": getattr(args, "tile", None),
             "dist.grid": getattr(args, "grid", None)}
    return [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]


def _out_dir(args: argparse.Namespace, name: str, resumable: bool) -> Path:
    """The run folder; a finished run is not overwritten, except a resumable tile store."""
    if args.out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("runs") / f"{name}-{stamp}"
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out: {args.out} exists and is not a folder")
    if not resumable and (args.out / "summary.json").exists():
        raise UserError(f"--out: {args.out} already holds a finished run (summary.json); "
                        "choose another folder or remove it")
    return args.out


TRAIN_KEYS = ("initial_loss", "final_loss", "loss_reduction", "steps_to_target",
              "tail_rate", "predicted_tail_rate", "lambda_min_0", "workers", "seconds_per_step",
              "samples_per_s")
GRAM_KEYS = ("n", "workers", "tiles_computed", "tiles_resumed", "lambda_min", "lambda_min_lower",
             "lambda_min_upper", "lambda_max", "condition", "gram_rel_err_inf", "seconds",
             "tiles_per_s", "gflops")
REGRESS_KEYS = ("n", "workers", "precondition", "rank_kept", "iterations", "relative_residual",
                "true_relative_residual", "converged", "test_mse", "test_error", "seconds",
                "seconds_per_iteration")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides may come before or after the options.
    args, rest = parser.parse_known_args(argv)
    unknown = [r for r in rest if r.startswith("-") or "=" not in r]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command in ("sweep", "report"):
        return run_study(args, rest)
    args.overrides = [*args.overrides, *rest]
    # Heavy imports after argument parsing, so `fntk --help` is instant.
    from ..config import load_config
    from ..distributed.train_job import TrainingFailed
    from ..interrupts import Interrupted

    try:
        cfg = load_config(args.config, [*args.overrides, *_overrides(args)])
        resume = getattr(args, "resume", False)
        if resume and args.out is None:
            raise UserError("--resume: needs --out, the stopped run's folder")
        if args.command == "train":
            from ..train.job import run_train_job

            out = _out_dir(args, cfg.name, resumable=resume)
            summary = run_train_job(cfg, out, resume=resume, progress=not args.quiet,
                                    verbose=args.verbose)
            keys = TRAIN_KEYS
        elif args.command == "regress":
            from ..regress.job import run_regress_job

            out = _out_dir(args, cfg.name, resumable=True)
            summary = run_regress_job(cfg, out, progress=not args.quiet)
            keys = REGRESS_KEYS
        else:
            from ..gram.job import run_gram_job

            if args.plan:  # arithmetic on the config: no Ray, no run folder
                from ..gram.plan_report import plan_report

                print(plan_report(cfg))
                return 0
            out = _out_dir(args, cfg.name, resumable=True)
            summary = run_gram_job(cfg, out, progress=not args.quiet)
            keys = GRAM_KEYS
    except UserError as err:  # config, data, cluster and argument errors all name their key
        print(f"fntk: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as err:
        print(f"fntk: error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:  # stopped at a safe point
        print(f"fntk: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        # Every file is written whole or not at all (fntk_dist.atomic): nothing half-written
        # is left looking finished, and a rerun with room to write continues.
        where = f": {err.filename}" if err.filename else ""
        print(f"fntk: error: cannot write{where} ({err.strerror}); no file was left "
              "half-written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # stopped at once (Ctrl-C, SIGTERM, or a second signal)
        what = {"gram": "the tiles stored so far are kept: rerun the same command to continue",
                "regress": "the CG state saved last is kept: rerun the same command to "
                           "continue"}.get(args.command, "continue with --resume where "
                                           "checkpoints were written (train.checkpoint_every)")
        print(f"fntk: interrupted; {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps({k: summary.get(k) for k in keys}, indent=1))
    print(f"run folder: {out}")
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """fntk's own warnings as one line, without the source location Python adds."""
    print(f"fntk: warning: {message}", file=sys.stderr if file is None else file)


def entry() -> None:
    """The `fntk` command: main() with SIGTERM (what schedulers send) handled as Ctrl-C, and
    warnings on one line."""
    signal.signal(signal.SIGTERM, _terminate)
    warnings.showwarning = _one_line_warning
    sys.exit(main())


if __name__ == "__main__":
    entry()
