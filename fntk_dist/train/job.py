"""`fntk train`: check the whole run, then train in this process or on Ray Train workers.

Every rule is checked here, on the driver, before any worker starts or any file is written:
the data itself, the config's cross-section rules (fntk_dist.checks, which need the data's n
and d), the cluster (reachable, with the GPUs asked for), and whether the run folder may be
used (`--resume` needs a checkpoint there; a started run is not overwritten without it).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from ..atomic import write_json, write_text
from ..checks import check_train
from ..config import RunConfig, dump_config
from ..data import Dataset, load_dataset
from ..errors import ConfigError
from ..identity import differing_keys, run_identity
from ..interrupts import stop_requests
from ..runtime import resolve_device
from .loop import train_loop
from .parts import FolderCheckpointer, LocalMesh, TorchEngine

IDENTITY = "run_identity.json"  # the net and the data (by content) a run's checkpoints hold


def _prepare_folder(out_dir: Path, cfg: RunConfig, data: Dataset, resume: bool,
                    has_checkpoint: bool) -> str:
    """Checks and starts the run folder; returns the run's W&B id (kept across resumes)."""
    if resume and not has_checkpoint:
        raise ConfigError(f"--resume: {out_dir} holds no checkpoint to resume from")
    if not resume and has_checkpoint:
        raise ConfigError(f"--out: {out_dir} holds a started run; pass --resume to continue it "
                          "or choose another folder")
    identity = run_identity(cfg, data, ("model", "data"))
    if resume and (out_dir / IDENTITY).exists():
        changed = differing_keys(json.loads((out_dir / IDENTITY).read_text()), identity)
        if changed:
            raise ConfigError(f"--resume: the run in {out_dir} was started with other "
                              f"{', '.join(changed)}; its checkpoints do not fit this config")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / IDENTITY, identity)
    write_text(out_dir / "config.yaml", dump_config(cfg))
    # A fresh start gets a fresh W&B id even in a used folder (a run killed before its first
    # checkpoint): W&B's service may still hold the old id's stream. A resumed run keeps it.
    id_file = out_dir / "wandb_run_id"
    if not resume or not id_file.exists():
        write_text(id_file, secrets.token_hex(8))
    return id_file.read_text().strip()


def run_train_job(cfg: RunConfig, out_dir: Path, resume: bool = False,
                  progress: bool = True, verbose: bool = False) -> dict:
    """Train cfg's net on cfg's data; writes the run folder and returns the summary.

    verbose: on Ray, stream the workers' own output here rather than into RUN/logs."""
    data = load_dataset(cfg.data)
    plan = check_train(cfg, data)
    out_dir = Path(out_dir).resolve()
    if plan.distributed:
        from ..distributed import train_job as ray_job

        cluster = ray_job.connect_for_training(cfg, plan, verbose)
        run_id = _prepare_folder(out_dir, cfg, data, resume, ray_job.has_checkpoint(out_dir))
        return ray_job.run_train_distributed(cfg, out_dir, plan, cluster, run_id, progress,
                                             verbose)
    device = resolve_device(cfg.train.device, "train.device")
    checkpointer = FolderCheckpointer(out_dir)
    with checkpointer.latest() as latest:
        run_id = _prepare_folder(out_dir, cfg, data, resume, latest is not None)
    with stop_requests() as stop:  # Ctrl-C / SIGTERM: stop after the step in progress
        return train_loop(cfg, out_dir, data, mesh=LocalMesh(), device=device,
                          make_engine=lambda net, eta, _rows: TorchEngine(net, cfg.train, eta),
                          checkpointer=checkpointer, run_id=run_id, progress=progress,
                          stop_requested=stop.requested)
