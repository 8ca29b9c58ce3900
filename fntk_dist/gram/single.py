"""`fntk gram` in one process: gram.npy and summary.json in the run folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import atomic_path, write_json, write_text
from ..config import RunConfig, dump_config
from ..data import load_dataset
from ..models.validation import as_dtype
from ..ntk import analytic_ntk, empirical_ntk, spectrum
from ..train.loop import resolve_device


def gram_summary(net, x: torch.Tensor, h: torch.Tensor, top: int) -> dict:
    """n, the spectrum, and the distance to the analytic kernel where it applies."""
    spec = spectrum(h, top)
    out = {"n": x.shape[0], "d": net.d, "m": net.m, "mode": net.mode, "k": net.k,
           "sketch": net.sketch, "train_output": net.train_output,
           "lambda_min": spec.lambda_min, "lambda_max": spec.lambda_max,
           "top_eigenvalues": spec.top, "condition": spec.condition,
           "lambda_inf": None, "gram_rel_err_inf": None}
    ax = net.analytic_inputs(x)
    if ax is not None:
        h_inf = analytic_ntk(ax, train_output=net.train_output)
        diff = torch.linalg.matrix_norm(h.double() - h_inf, ord=2)
        out["lambda_inf"] = spectrum(h_inf, 1).lambda_min
        out["gram_rel_err_inf"] = float(diff / torch.linalg.matrix_norm(h_inf, ord=2))
    return out


def run_gram(cfg: RunConfig, out_dir: Path, progress: bool = True) -> dict:
    device = resolve_device(cfg.gram.device)
    data = load_dataset(cfg.data)
    x = torch.as_tensor(data.x, dtype=as_dtype(cfg.model.dtype), device=device)
    net = cfg.model.build(d=data.d, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", dump_config(cfg))
    t0 = time.perf_counter()
    with tqdm(desc=f"gram n={x.shape[0]}", unit="block", disable=not progress) as bar:
        def tick(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        h = empirical_ntk(net, x, block=cfg.gram.block, on_block=tick)
    seconds = time.perf_counter() - t0
    with atomic_path(out_dir / "gram.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, h.cpu().numpy())
    summary = {**gram_summary(net, x, h, cfg.gram.top), "seconds": seconds,
               "dtype": cfg.model.dtype, "device": str(device)}
    write_json(out_dir / "summary.json", summary)
    return summary
