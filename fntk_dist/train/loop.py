"""Single-process training: the whole path from config to run folder, read in one go.

Loss L = 1/2 sum_i (f(x_i) - y_i)^2. Full-batch gradient descent by default (SGD and Adam on
mini-batches as options); the step size is given or eta = lr_scale / lambda_max(H(0)). Every
step walks the neurons in blocks (train.blocked), so memory stays O(n * block + parameters).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..atomic import write_text
from ..config import ConfigError, RunConfig, dump_config
from ..data import load_dataset
from ..models.validation import as_dtype
from ..track import make_tracker
from .blocked import blocked_output
from .diagnostics import Diagnostics
from .summary import finish_run


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda asked for, but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(cfg: RunConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train cfg's net on cfg's data; write the run folder; return the summary."""
    tc = cfg.train
    device = resolve_device(tc.device)
    data = load_dataset(cfg.data)
    dt = as_dtype(cfg.model.dtype)
    x = torch.as_tensor(data.x, dtype=dt, device=device)
    y = torch.as_tensor(data.y, dtype=dt, device=device)
    n = x.shape[0]
    if tc.lr is None and n > tc.gram_max_n:
        raise ConfigError(f"train.lr: required when n={n} > train.gram_max_n={tc.gram_max_n} "
                          "(the step size is otherwise read off the n x n Gram)")
    if tc.batch_size is not None and tc.batch_size > n:
        raise ConfigError(f"train.batch_size: {tc.batch_size} exceeds the {n} training points")
    net = cfg.model.build(d=data.d, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", dump_config(cfg))

    diag = Diagnostics(net, x, tc.gram_max_n, tc.block, cfg.gram.top)
    eta = tc.lr if tc.lr is not None else tc.lr_scale / diag.spec0.lambda_max
    params = [p for p in net.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=eta) if tc.optimizer == "adam"
           else torch.optim.SGD(params, lr=eta))
    batch = n if tc.optimizer == "gd" or tc.batch_size is None else tc.batch_size
    gen = torch.Generator().manual_seed(cfg.model.seed)
    cost = net.cost()
    x_test = torch.as_tensor(data.x_test, dtype=dt, device=device)
    y_test = torch.as_tensor(data.y_test, dtype=dt, device=device)
    rows: list[dict] = []  # what the tracker logs, kept for the summary
    tracker = make_tracker(cfg.tracking, out_dir, cfg.name or out_dir.name,
                           cfg.model_dump(mode="json"), rows=rows)

    def full_loss() -> float:
        with torch.no_grad():
            return float(0.5 * ((blocked_output(net, x, tc.block) - y) ** 2).sum())

    def test_metrics() -> dict[str, float]:
        if y_test.numel() == 0:
            return {}
        with torch.no_grad():
            pred = blocked_output(net, x_test, tc.block)
        return {"test_mse": float(((pred - y_test) ** 2).mean()),
                "test_error": float((torch.sign(pred) != torch.sign(y_test)).double().mean())}

    step_seconds: list[float] = []
    target_step, loss0 = None, None
    try:
        bar = tqdm(range(tc.steps + 1), desc=f"train {cfg.name or out_dir.name}", unit="step",
                   disable=not progress, mininterval=1.0)
        for t in bar:
            last, logging = t == tc.steps, t % tc.log_every == 0 or t == tc.steps
            row: dict[str, float] = {}
            _sync(device)
            t0 = time.perf_counter()
            if batch == n:
                out = blocked_output(net, x, tc.block)
                loss = 0.5 * ((out - y) ** 2).sum()
            else:
                idx = torch.randperm(n, generator=gen)[:batch].to(device)
                out = blocked_output(net, x[idx], tc.block)
                loss = 0.5 * (n / batch) * ((out - y[idx]) ** 2).sum()
            _sync(device)
            seconds = time.perf_counter() - t0
            # Everything measured at step t is measured before the update of step t.
            loss_value = float(loss.detach()) if batch == n else (full_loss() if logging else None)
            if loss_value is not None:
                loss0 = loss_value if loss0 is None else loss0
                if target_step is None and loss_value <= tc.target_ratio * loss0:
                    target_step = t
                if logging:
                    row["loss"] = loss_value
            if tc.ntk_every and t % tc.ntk_every == 0 or t in (0, tc.steps):
                row.update(diag.gram(net))
                row.update(diag.weights(net))
                row.update(test_metrics())
            if not last:
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                _sync(device)
                step_seconds.append(seconds + time.perf_counter() - t0)
                if logging:
                    sec = step_seconds[-1]
                    row.update(step_seconds=sec, samples_per_s=batch / sec,
                               gflops=cost.train_step_flops * batch / sec / 1e9)
            if row:
                tracker.log(row, step=t)
            if logging:
                bar.set_postfix(loss=f"{loss_value:.3e}" if loss_value is not None else "-",
                                refresh=False)
    except BaseException:
        tracker.abort()
        raise

    return finish_run(cfg, out_dir, tracker, rows=rows, step_seconds=step_seconds,
                      target_step=target_step, diag=diag, net=net, n=n, d=data.d, eta=eta,
                      batch=batch, final={"n_test": int(y_test.numel()), "device": str(device),
                                          **{f"final_{k}": v for k, v in test_metrics().items()}})
