"""`fntk gram`: a net's NTK Gram over a data set, tile by tile, into a resumable tile store.

The config is checked (fntk_dist.checks) before any file is written or worker started. The
store's identity is the net, the data and the tiling, not where tiles are computed: this
process (LocalExecutor) and Ray actors (RayExecutor, with dist.workers or dist.address) write
the same tiles and the same summary, and either resumes the other's store. A killed job loses
at most its tiles in flight; the same command resumes it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..atomic import write_text
from ..checks import check_gram
from ..config import RunConfig, dump_config
from ..data import Dataset, load_dataset
from ..identity import differing_keys, identity_hash, run_identity
from ..runtime import as_dtype, peak_rss_bytes, resolve_device
from ..track import make_tracker
from .executor import LocalExecutor, TileExecutor
from .grid_plan import choose_grid
from .progress import Watch
from .summary import CERTIFY, cost_report, spectrum_report
from .tile_store import TileStore, TileStoreError
from .tiles import write_tiles


def tile_dtype(cfg: RunConfig) -> str:
    """The stored tiles' dtype: gram.dtype, by default the net's."""
    return cfg.gram.dtype or cfg.model.dtype


def gram_identity(cfg: RunConfig, data: Dataset, tile: int) -> dict:
    """What determines the tiles: the net, the data (by content), the tiling and the tiles'
    dtype (not the workers or where tiles are computed)."""
    return run_identity(cfg, data, ("model", "data"), n=data.n, tile=tile,
                        tile_dtype=tile_dtype(cfg))


def _check_store(out_dir: Path, identity: dict) -> None:
    """A store of another identity in out_dir is refused, naming the keys that differ."""
    if not (out_dir / "manifest.json").exists():
        return
    stored = TileStore.open(out_dir)
    if stored.config_hash == identity_hash(identity):
        return
    keys = differing_keys(stored.meta.get("identity"), identity)
    raise TileStoreError(f"{out_dir} holds the Gram of another config (differs in "
                         f"{', '.join(keys)}): choose another folder or remove it")


def _executor(cfg: RunConfig, grid: tuple[int, int], x: torch.Tensor,
              device: torch.device | None, placed: tuple[str, dict] | None) -> TileExecutor:
    if placed is not None:
        from ..distributed.gram_actors import RayExecutor

        return RayExecutor(cfg, grid, x, placed)
    return LocalExecutor(cfg, x, device)


def run_gram_job(cfg: RunConfig, out_dir: Path, progress: bool = True) -> dict:
    """Computes the tiles cfg's store lacks, then its spectrum; writes the run folder (tile
    store, config.yaml, metrics, summary.json) and returns the summary."""
    data = load_dataset(cfg.data)
    n, d = data.n, data.d
    plan = check_gram(cfg, n, d)
    # The actors' shape: dist.grid, else the one of least predicted time (fntk gram --plan).
    grid = plan.grid or (choose_grid(cfg, n, d, plan.tile, plan.workers) if plan.distributed
                         else (1, 1))
    out_dir = Path(out_dir)
    identity = gram_identity(cfg, data, plan.tile)
    _check_store(out_dir, identity)
    # gram.device: Ray actors are placed on the cluster, this process resolves it; both here,
    # before any file is written.
    device, placed = None, None
    if plan.distributed:
        from ..distributed.gram_actors import connect_for_gram  # Ray only for jobs that use it

        placed = connect_for_gram(cfg, plan.workers)
    else:
        device = resolve_device(cfg.gram.device, "gram.device")
    x = torch.as_tensor(data.x, dtype=as_dtype(cfg.model.dtype))
    finisher = cfg.model.build(d, neurons=(0, 1))  # features and scale only: no neuron rows
    store = TileStore.create_or_open(
        out_dir, config_hash=identity_hash(identity), n=n, tile=plan.tile,
        dtype=tile_dtype(cfg), meta={"identity": identity},
    )
    write_text(out_dir / "config.yaml", dump_config(cfg))
    todo = store.missing()
    resumed = len(store.all_tiles()) - len(todo)
    if todo:  # an earlier summary, and factor of the tiles, no longer describe the store
        (out_dir / "summary.json").unlink(missing_ok=True)
        shutil.rmtree(out_dir / CERTIFY, ignore_errors=True)
    tracker = make_tracker(cfg.tracking, out_dir, cfg.name or out_dir.name,
                           cfg.model_dump(mode="json"))
    # Nothing computed by this run: nothing ran anywhere to report on.
    info = {"device": None, "shard_nodes": [], "worker_peak_rss_bytes": None,
            "worker_base_rss_bytes": None}
    phases = None  # where this run's tile seconds went: none computed, none to report
    t0 = time.perf_counter()
    try:
        if todo:
            workers = f"{plan.workers} worker" + "s" * (plan.workers > 1)
            if plan.distributed:
                workers += f", grid {grid[0]}x{grid[1]}"
            with contextlib.closing(_executor(cfg, grid, x, device, placed)) as executor, \
                    tqdm(total=len(todo), desc=f"gram tiles (n={n}, {workers})", unit="tile",
                         disable=not progress, mininterval=1.0) as bar:
                phases = write_tiles(store, executor, finisher, todo, tracker, bar)
                info = executor.info()
            store.remove_temporaries()
            store.compact()
        seconds = time.perf_counter() - t0
        watch = Watch(tracker, len(store.all_tiles()), progress)
        spectral = spectrum_report(store, finisher, x, cfg.gram, watch,
                                   plan.workers if plan.distributed else None)
        watch.close()
    except BaseException:
        tracker.abort()
        raise
    summary = {
        # The net's own account of itself: per-layer lists for mode, k and sketch at depth > 1.
        "n": n, "d": d, "depth": finisher.depth, "m": finisher.m, "mode": finisher.mode,
        "k": finisher.k, "sketch": finisher.sketch, "train_output": finisher.train_output,
        "dtype": cfg.model.dtype, "tile_dtype": tile_dtype(cfg), "device": info["device"],
        "workers": plan.workers, "grid": list(grid) if plan.distributed else None,
        "shard_nodes": info["shard_nodes"], "tile": plan.tile, "tiles": len(store.all_tiles()),
        "tiles_computed": len(todo), "tiles_resumed": resumed, **spectral,
        "seconds": seconds, **cost_report(store), "tile_phase_seconds": phases,
        "disk_bytes": store.disk_bytes(),
        "worker_peak_rss_bytes": info["worker_peak_rss_bytes"],
        "worker_base_rss_bytes": info["worker_base_rss_bytes"],
        "peak_rss_bytes": peak_rss_bytes(),  # this process: assembly, factor, Lanczos
    }
    tracker.finish(summary)
    return summary
