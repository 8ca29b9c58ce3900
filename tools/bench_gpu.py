"""GPU benchmark: the device's dense GEMM peak, the Gram's and the training step's share of it,
and the CUDA Gram's agreement with the CPU float64 Gram; one JSON and one Markdown report.

    python tools/bench_gpu.py [--device cuda] [--small] [--repeats 3] [--out gpu_report]
                              [--pytest-log FILE --pytest-rc N]

Measured in one run, each a median over --repeats timed calls after one warm-up call (timers
synchronise the device before they read the clock):

- peak: square GEMMs (8192; 256 with --small) in float32 (IEEE), TF32, float64 and bfloat16;
- Gram (issue 18's target: n = 16384, m = 65536, d = 1024; sketch_in with k = 128 and dense;
  float32 and float64 nets): TFLOP/s of the whole Gram (net.gram_flops over its time) and of
  the overlap products S S^T (2 n^2 m over the time of the sums over neurons, where they are
  computed), as fractions of the bfloat16 peak (target: >= 50% for the overlap products);
- agreement: the first rows of each CUDA Gram against the CPU's float64 cross-Gram of those
  rows (target: 1e-10 for float64 nets; float32 nets differ where a pre-activation near 0
  rounds to the other sign, which moves an entry by about 1/m);
- training step (target: sketch_in, m = 2^20, k = 128, d = 1024, n = 8192, bf16 autocast;
  in the blocks `fntk train` picks and, on CUDA, in blocks from free device memory):
  model FLOPs (net.cost().train_step_flops * n) per second as a fraction of the bfloat16 peak
  (target: >= 40%), with and without autocast; under autocast on CUDA both with the fused
  kernels (train.fused) and with the walk they replace;
- scaling (tools/gpu_scaling.py): the tile phase of one-device `fntk gram` jobs against the
  scaling model's prediction for one actor, with its stated rates and with this run's.

--device cpu --small runs the same code on the CPU at toy sizes (a unit test does): its
timings mean nothing. --only gram|step|scaling (repeatable) runs those sections alone, after
the peaks. --pytest-log/--pytest-rc put a test run's outcome into the report (tools/gpu_check.sh
does).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from gpu_scaling import markdown as scaling_markdown
from gpu_scaling import scaling_runs

from fntk_dist import TwoLayerNet, empirical_ntk
from fntk_dist.models.blocks import device_block
from fntk_dist.ntk.empirical import partial_sums
from fntk_dist.ntk.gram_terms import unit_readout
from fntk_dist.runtime import synchronize
from fntk_dist.train import fused
from fntk_dist.train.blocked import blocked_output

SIZES = {
    "target": {"peak": 8192, "gram": {"n": 16384, "m": 65536, "d": 1024, "k": 128},
               "step": {"n": 8192, "m": 1 << 20, "d": 1024, "k": 128}, "agree_rows": 256},
    "small": {"peak": 256, "gram": {"n": 256, "m": 2048, "d": 64, "k": 16},
              "step": {"n": 256, "m": 4096, "d": 64, "k": 16}, "agree_rows": 32},
}
SECTIONS = ("gram", "step", "scaling")
TARGETS = {"gram_overlap_fraction_of_bf16_peak": 0.5, "step_fraction_of_bf16_peak": 0.4,
           "gram_agreement_float64": 1e-10}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> dict:
    """Median, min and max seconds of `repeats` calls after a warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


@contextlib.contextmanager
def float32_matmul(device: torch.device, precision: str) -> Iterator[None]:
    """float32 products in `precision` ('ieee' or 'tf32') on CUDA while inside."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = precision
    try:
        yield
    finally:
        matmul.fp32_precision = before


def gemm_peaks(n: int, device: torch.device, repeats: int) -> dict:
    """TFLOP/s of an n x n x n GEMM in float32, TF32 (CUDA only), float64 and bfloat16."""
    out = {}
    kinds = [("float32", torch.float32, "ieee"), ("float64", torch.float64, "ieee"),
             ("bf16", torch.bfloat16, "ieee")]
    if device.type == "cuda":
        kinds.insert(1, ("tf32", torch.float32, "tf32"))
    for label, dtype, precision in kinds:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        with float32_matmul(device, precision):
            t = timed(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), device, repeats)
        out[label] = {**t, "tflops": 2 * n**3 / t["median_s"] / 1e12}
    return out


def _points(n: int, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return x.to(device=device, dtype=dtype)


def _rel_errors(got: torch.Tensor, want: torch.Tensor) -> dict:
    diff = got.double() - want
    return {"max_rel": float(diff.abs().max() / want.abs().max()),
            "frobenius_rel": float(diff.norm() / want.norm())}


def gram_runs(size: dict, rows: int, device: torch.device, repeats: int, peak: float) -> list:
    """Each Gram: its time and TFLOP/s (net.gram_flops), the time of its sums over neurons
    (ntk.empirical.partial_sums, where the overlap products are) and their TFLOP/s (2 n^2 m),
    and its agreement with the CPU."""
    n, m, d, k = size["n"], size["m"], size["d"], size["k"]
    x64 = _points(n, d, torch.device("cpu"), torch.float64)
    out = []
    for mode in ("sketch_in", "dense"):
        kk = k if mode == "sketch_in" else None
        reference = None
        for dtype in (torch.float32, torch.float64):
            net = TwoLayerNet(d, m, mode, kk, "gaussian" if kk else None, False, 0, dtype,
                              device)
            x = x64.to(device=device, dtype=dtype)
            h = None

            def gram(net=net, x=x) -> None:
                nonlocal h
                h = empirical_ntk(net, x)

            t = timed(gram, device, repeats)
            counts = unit_readout(net.a.detach())
            sums = timed(lambda net=net, x=x, c=counts: partial_sums(net, x, None, None, None, c),
                         device, repeats)
            if reference is None:  # the CPU float64 cross-Gram of the first rows, once a mode
                cpu = TwoLayerNet(d, m, mode, kk, "gaussian" if kk else None, False, 0,
                                  torch.float64, "cpu")
                reference = empirical_ntk(cpu, x64[:rows], x64)
            overlap = 2 * n * n * m / sums["median_s"] / 1e12
            whole = net.gram_flops(n, n) / t["median_s"] / 1e12
            out.append({"mode": mode, "k": kk, "dtype": str(dtype).removeprefix("torch."),
                        "n": n, "m": m, "d": d, **t, "sums_median_s": sums["median_s"],
                        "sums_min_s": sums["min_s"], "sums_max_s": sums["max_s"],
                        "overlap_tflops": overlap,
                        "overlap_fraction_of_bf16_peak": overlap / peak,
                        "gram_tflops": whole, "gram_fraction_of_bf16_peak": whole / peak,
                        "agreement_rows": rows,
                        **_rel_errors(h[:rows].cpu(), reference)})
            del h
    return out


def step_runs(size: dict, device: torch.device, repeats: int, peak: float) -> list:
    """One blocked training step (forward, backward, SGD update) of a float32 sketch_in net,
    with and without bf16 autocast, in the blocks `fntk train` picks and, on CUDA, in blocks
    from device memory (models.blocks.device_block): model FLOPs per second against the
    bfloat16 peak."""
    n, m, d, k = size["n"], size["m"], size["d"], size["k"]
    net = TwoLayerNet(d, m, "sketch_in", k, "gaussian", False, 0, torch.float32, device)
    x = _points(n, d, device, torch.float32)
    y = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(device)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-6)
    flops = net.cost().train_step_flops * n
    blocks = {"default": None}
    if device_block(n, device) is not None:
        blocks["device"] = device_block(n, device)
    # bf16 steps twice where train.fused's kernels run: fused, and the walk they replace.
    kernels_run = fused.available(torch.empty(0, k, device=device))  # on the features (k)
    variants = [(True, True), (True, False)] if kernels_run else [(True, False)]
    out = []
    for (source, block), (autocast, kernels) in itertools.product(
            blocks.items(), [*variants, (False, False)]):
        def step(block=block, autocast=autocast, kernels=kernels) -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = 0.5 * ((blocked_output(net, x, block, fused=kernels) - y) ** 2).sum()
            loss.backward()
            opt.step()

        row = {"mode": "sketch_in", "n": n, "m": m, "d": d, "k": k, "bf16_autocast": autocast,
               "blocks": source if block is None else f"{source} ({block})",
               "kernels": "fused" if kernels else "walk", "model_flops": flops}
        try:
            t = timed(step, device, repeats)
        except Exception as err:  # recorded (a CUDA or a Triton error): what fails on this device
            out.append({**row, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"})
            continue
        tflops = flops / t["median_s"] / 1e12
        out.append({**row, **t, "tflops": tflops, "fraction_of_bf16_peak": tflops / peak})
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(report: dict) -> str:
    """The report as Markdown: the device, the peaks, then one table per benchmark."""
    peak = report["peak"]
    lines = [f"# GPU check: {report['device_name']}", "",
             f"torch {report['torch']}, CUDA {report['cuda']}"
             f"{', triton ' + report['triton'] if report.get('triton') else ''}, "
             f"sizes: {report['sizes']}, "
             f"{report['repeats']} timed repeats (median, [min, max]).", ""]
    if "tests" in report:
        tests = report["tests"]
        lines += [f"Tests (`pytest -m gpu`): exit {tests['rc']}: {tests['summary']}", ""]
    lines += ["| GEMM peak | TFLOP/s | seconds |", "|---|---|---|"]
    lines += [f"| {kind} | {v['tflops']:.3g} | {v['median_s']:.4g} [{v['min_s']:.4g}, "
              f"{v['max_s']:.4g}] |" for kind, v in peak.items()]
    if report.get("gram"):
        lines += ["", "| Gram | dtype | seconds | Gram TFLOP/s | of bf16 peak | neuron sums, "
                  "seconds | overlap TFLOP/s | of bf16 peak | max rel. err vs CPU f64 | "
                  "Frobenius rel. |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in report.get("gram", []):
        name = f"{g['mode']}{'' if g['k'] is None else ' k=' + str(g['k'])} n={g['n']} " \
               f"m={g['m']} d={g['d']}"
        lines.append(f"| {name} | {g['dtype']} | {g['median_s']:.4g} [{g['min_s']:.4g}, "
                     f"{g['max_s']:.4g}] | {g['gram_tflops']:.3g} | "
                     f"{g['gram_fraction_of_bf16_peak']:.0%} | {g['sums_median_s']:.4g} "
                     f"[{g['sums_min_s']:.4g}, {g['sums_max_s']:.4g}] | "
                     f"{g['overlap_tflops']:.3g} | {g['overlap_fraction_of_bf16_peak']:.0%} | "
                     f"{g['max_rel']:.2e} | {g['frobenius_rel']:.2e} |")
    if report.get("step"):
        lines += ["", "| training step | blocks | bf16 autocast | seconds | model TFLOP/s "
                  "| of bf16 peak |", "|---|---|---|---|---|---|"]
    for s in report.get("step", []):
        name = f"{s['mode']} n={s['n']} m={s['m']} d={s['d']} k={s['k']}"
        blocks = s["blocks"] if "kernels" not in s else f"{s['blocks']}, {s['kernels']}"
        if "error" in s:
            lines.append(f"| {name} | {blocks} | {s['bf16_autocast']} | "
                         f"failed: {s['error']} | | |")
            continue
        lines.append(f"| {name} | {blocks} | {s['bf16_autocast']} | {s['median_s']:.4g} "
                     f"[{s['min_s']:.4g}, {s['max_s']:.4g}] | {s['tflops']:.3g} | "
                     f"{s['fraction_of_bf16_peak']:.0%} |")
    if report.get("scaling"):  # runs before 2026-11-26's H100 runs have none
        lines += scaling_markdown(report["scaling"])
    lines += ["", f"Targets (issue 18): {json.dumps(TARGETS)}", ""]
    return "\n".join(lines)


def tests_outcome(log: Path, rc: int) -> dict:
    """The last line of a pytest log (its counts) and its exit status."""
    tail = [line for line in log.read_text().splitlines() if line.strip()]
    return {"rc": rc, "summary": tail[-1].strip("= ") if tail else "(empty log)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--small", action="store_true", help="toy sizes (a CPU test runs these)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", action="append", choices=SECTIONS, default=None,
                    help="run this section (repeatable; default all), after the GEMM peaks")
    ap.add_argument("--out", type=Path, default=Path("gpu_report"))
    ap.add_argument("--pytest-log", type=Path, default=None)
    ap.add_argument("--pytest-rc", type=int, default=None)
    ap.add_argument("--render", type=Path, default=None, metavar="REPORT_JSON",
                    help="print the Markdown of a report.json written earlier; run nothing")
    args = ap.parse_args()
    if args.render is not None:
        try:
            sys.stdout.write(markdown(json.loads(args.render.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as err:
            ap.error(f"--render {args.render}: not a report.json of this tool ({err})")
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device (use --device cpu --small)")
    if args.repeats < 1:
        ap.error("--repeats: expected an integer >= 1")
    device = torch.device(args.device)
    size = SIZES["small" if args.small else "target"]
    peak = gemm_peaks(size["peak"], device, args.repeats)
    bf16 = peak["bf16"]["tflops"]
    report = {"device_name": device_name(device), "device": args.device,
              "torch": torch.__version__, "cuda": torch.version.cuda,
              "triton": fused.triton.__version__ if fused.triton is not None else None,
              "sizes": "small" if args.small else "target", "repeats": args.repeats,
              "peak": peak, "targets": TARGETS}
    sections = args.only or SECTIONS
    if "gram" in sections:
        report["gram"] = gram_runs(size["gram"], size["agree_rows"], device, args.repeats, bf16)
    if "step" in sections:
        report["step"] = step_runs(size["step"], device, args.repeats, bf16)
    if "scaling" in sections:
        report["scaling"] = scaling_runs(size["gram"], args.small, device, peak, args.repeats,
                                         lambda n, d, dt: _points(n, d, torch.device("cpu"), dt))
    if args.pytest_log is not None:
        report["tests"] = tests_outcome(args.pytest_log, args.pytest_rc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    text = markdown(report)
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
