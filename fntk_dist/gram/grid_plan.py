"""The grid plan: predicted time of one Gram tile sweep on a W x R grid of actors, and the shape
of least predicted time (DESIGN section 7, "Grid plan").

The grid (fntk_dist.distributed.gram_actors): W width shards x R row groups. A row group is the
whole width-sharded net: tiles (the upper triangle, T = t(t+1)/2 for t tile rows) go to the
row group with the fewest pending, so a group computes about ceil(T / R) of them. On a tile
each of its W actors computes the partial of its m/W neurons; the W - 1 others sum theirs by a
binary tree and send the sum to the group's root, which adds it to its own, finishes the tile
and stores it: written beside the store when the roots reach its folder (one host, or a shared
filesystem), else sent to the driver, which writes it. The driver commits each tile (a rename
and a journal line).

The cost of a tile is the net's own count (Network.gram_flops), split into the part every actor
repeats (each point's features and the layers below the last) and the part spread over the
neurons: gram_flops is affine in the last layer's width m, so two widths give both. A kernel
over few neurons runs below its peak: rate(w) = peak * w / (w + half_width) for w neurons per
block; each pre-activation it forms costs activation_s beside its products (passes through
memory, which no FLOP count holds), and each row of points a product's GEMM reads costs
operand_s (a diagonal tile's symmetric path reads more, in smaller blocks). A fresh actor's
first tiles cost cold_s more, actors sharing a host's cores run at shared_rate of their lone
rate, and a commit writes its tile to disk (flush_bytes_s).

No Ray here: the plan is arithmetic on the config, so `fntk gram --plan` starts nothing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..models.blocks import default_block
from ..models.groups import Role
from ..ntk.deep_terms import last_groups, lower_groups
from ..ntk.gram_terms import symmetric_operand_rows, symmetric_share

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..models.config import ModelConfig
    from ..models.network import Network

FLOAT64_BYTES = 8  # the partials' sums are float64 whatever the net's dtype


@dataclass(frozen=True)
class Rates:
    """What the plan knows of the hardware, per actor unless said otherwise."""

    name: str
    peak_flops: float  # FLOP/s of one actor's tile kernel over a wide block of neurons
    half_width: float  # neurons per block at which the kernel runs at half its peak
    link_bytes_s: float  # bytes/s one partial or tile moves from an actor to another or the driver
    call_s: float  # seconds a remote call costs besides its data (submit, schedule, reply)
    cores: int | None  # actors (and the driver) the host runs at full rate; None: one each
    finish_flops: float  # FLOP/s of a root finishing a tile (features, products, Hadamard)
    finish_s: float  # a root's seconds per tile besides the finish's FLOPs and the store
    store_bytes_s: float  # bytes/s of writing a tile file (encoded, hashed, written)
    commit_s: float  # the driver's seconds per tile (rename, journal line, progress)
    shared_store: bool = True  # the roots reach the store's folder: they write the tiles
    gpu: bool = False  # the actors' blocks are sized by device memory, not the CPU cache
    # FLOP/s of the 0/1 mask products S S^T (gram_terms._RowsSum's counts); None: peak_flops.
    # A GPU multiplies the masks in bf16 whatever the net's dtype; the CPU's calibration fits
    # one rate over the kernel's mix.
    count_flops: float | None = None
    # Seconds an actor's first tile takes beyond its later ones, once per actor: a fresh
    # process faulting in its blocks' temporaries and sums. Measured on the CPU; 0 for the
    # GPU figures (not measured there).
    cold_s: float = 0.0
    # The kernel's rate on each actor while every core runs one, as a fraction of its rate
    # alone (the cores share caches and memory bandwidth). Measured on the CPU; 1 for GPUs.
    shared_rate: float = 1.0
    # Seconds per pre-activation (a point and a neuron) a kernel forms beside its products: the
    # passes of the pre-activation, its mask and its ReLU through memory, which no FLOP rate
    # holds (they set how a CPU kernel's time grows with the tile). Measured on the CPU; 0 for
    # the GPU figures, whose kernels fuse them into the products.
    activation_s: float = 0.0
    # Seconds per row of points a square product's GEMM reads, per neuron: each GEMM packs
    # its operands. A whole product reads rows + cols; the CPU's symmetric path on a diagonal
    # tile reads (SYM_SPLIT + 1) rows in its smaller blocks, which is why such a tile costs
    # more than its share of the FLOPs. Measured on the CPU (diagonal and off-diagonal tiles
    # tell it from activation_s); 0 for the GPU figures, whose products are whole.
    operand_s: float = 0.0
    # Bytes/s at which the driver's commit writes the tile file it stores to disk: the
    # journal line's fsync makes the filesystem (ext4, data=ordered) write the tile's data
    # first, so a commit costs commit_s + tile bytes / this. inf: not measured.
    flush_bytes_s: float = math.inf

    def rate(self, width: float, counts: bool = False) -> float:
        """FLOP/s of a kernel whose neuron blocks hold `width` neurons (counts: of its mask
        products)."""
        peak = self.count_flops if counts and self.count_flops else self.peak_flops
        return peak * width / (width + self.half_width)

    def slowdown(self, actors: int) -> float:
        """How much longer each of `actors` actors' kernel takes than one alone: 1 /
        shared_rate where more than one share a host's cores, else 1."""
        return 1.0 / self.shared_rate if self.cores is not None and actors > 1 else 1.0


# Calibrated on this project's 2-core CPU VM (AVX-512), one thread per actor, float64 net, on
# 2026-11-28 at 00:06 (load average 0.19 before):
#   .venv/bin/python tools/scaling_model.py --calibrate
# (kernel: span_partial in a one-thread actor on off-diagonal tiles of 512 rows for 32 to 8192
# neurons and of 256 and 1024 rows for 8192, and on diagonal tiles of those three sizes at
# 8192, fitted: peak and half-rate width of its products, seconds per pre-activation and per
# operand row; that kernel alone and one actor per core at once; cold start: the first two
# tiles of fresh actors beyond later ones; call and link: Ray calls returning nothing and a
# 2 MB GramPartial sum; finish and store: finish_span of 256 and 512 row tiles, stage_tile of
# both; commit and its write to disk: TileStore.commit of staged 0.5, 2 and 32 MB tiles). The
# products' fitted peak is an effective one: the 0/1 mask products run in float32.
CPU_RATES = Rates(name="cpu", peak_flops=292e9, half_width=847.0, link_bytes_s=7.2e8,
                  call_s=0.78e-3, cores=os.cpu_count() or 1, finish_flops=31.0e9,
                  finish_s=3.0e-4, store_bytes_s=5.1e8, commit_s=1.1e-3, cold_s=0.046,
                  shared_rate=0.96, activation_s=3.46e-9, operand_s=3.77e-10,
                  flush_bytes_s=2.42e9)


def h100_rates(dtype: str = "float32", link_bytes_s: float = 25e9,
               shared_store: bool = True) -> Rates:
    """An H100 per actor (datasheet figures): 51 TFLOP/s float32 GEMM (IEEE, no TF32: the
    kernels disable it), 67 TFLOP/s float64 tensor core, 795 TFLOP/s bf16, at which the 0/1
    masks are multiplied whatever the net's dtype (exact: float32 accumulation); link: 25-50
    GB/s per GPU between nodes. A kernel launch (~10 us) per block; the
    half-rate width is a guess of where a GEMM's inner dimension stops filling the SMs (its
    other dimensions are the tile's rows). Roots finish on their GPU; a tile file is staged
    (encoded, hashed, written) at 1 GB/s by the host's CPU: measured 0.70-0.90 GB/s on an H100
    host with the hash in series with the write, which now run side by side
    (docs/gpu/README.md); a shared filesystem slower than that sets its own rate."""
    peak = {"float32": 51e12, "float64": 67e12}[dtype]
    return Rates(name=f"h100-{dtype}", peak_flops=peak, half_width=512.0,
                 link_bytes_s=link_bytes_s, call_s=1e-3, cores=None, finish_flops=peak,
                 finish_s=1e-3, store_bytes_s=1e9, commit_s=1e-3, shared_store=shared_store,
                 gpu=True, count_flops=795e12)


@dataclass(frozen=True)
class Prediction:
    """One tile sweep on a W x R grid."""

    width: int  # W: width shards
    rows: int  # R: row groups
    compute_s: float  # a root's seconds: its first tile's cold start, kernel, finishing, storing
    comm_s: float  # its group's seconds moving partials (the tree's levels into the root)
    driver_s: float  # the driver's seconds: committing every tile (and writing sent ones)
    bytes_per_actor: float  # bytes each actor sends over the sweep (partials, sent tiles)
    total_s: float  # predicted wall seconds of the sweep
    efficiency: float  # one actor's seconds / (W * R * these seconds)


@dataclass(frozen=True)
class TileCosts:
    """What one rows x cols tile costs, independent of the grid: FLOPs every actor repeats,
    FLOPs per neuron of the last layer (of which square_flops are its rows x cols products,
    a ROWS term's and the readout's, and of those count_flops 0/1 mask products: a ROWS term's
    S S^T while the readout is +-1, as at initialisation), the root's finishing FLOPs, a
    partial's bytes, the stored tile's bytes."""

    count: int  # tiles of this shape in the sweep
    rows: int
    cols: int
    diagonal: bool  # a tile of the diagonal: its rows are its columns
    fixed_flops: float
    per_neuron_flops: float
    square_flops: float
    count_flops: float
    finish_flops: float
    partial_bytes: float
    tile_bytes: float
    activations: float  # pre-activations per neuron: rows + cols (rows on the diagonal)


def _with_last_width(model: ModelConfig, m: int) -> ModelConfig:
    if model.layers is None:
        return model.model_copy(update={"m": m})
    layers = [*model.layers[:-1], model.layers[-1].model_copy(update={"m": m})]
    return model.model_copy(update={"m": m, "layers": layers})


def tile_shapes(n: int, tile: int) -> list[tuple[int, int, int, bool]]:
    """(count, rows, cols, diagonal) of the upper triangle's tiles: full tiles and, when tile
    does not divide n, the last row of tiles with its n mod tile rows."""
    full, last = divmod(n, tile)
    shapes = [(full, tile, tile, True), (full * (full - 1) // 2, tile, tile, False)]
    if last:
        shapes += [(full, tile, last, False), (1, last, last, True)]
    return [s for s in shapes if s[0]]


def tile_costs(model: ModelConfig, d: int, n: int, tile: int,
               tile_dtype: str | None = None) -> list[TileCosts]:
    """The sweep's tiles, grouped by shape, with their costs from the net's own counts
    (tile_dtype: the store's, by default the net's)."""
    m = model.m
    elem = 4 if (tile_dtype or model.dtype) == "float32" else FLOAT64_BYTES
    net = model.build(d, neurons=(0, 1))  # features and scale only: what a finish reads
    wider = _with_last_width(model, 2 * m).build(d, neurons=(0, 1))
    masks = sum(g.role is Role.ROWS for g in last_groups(net))
    squares = masks + sum(g.role is Role.READOUT for g in last_groups(net))
    out = []
    for count, rows, cols, diag in tile_shapes(n, tile):
        flops_m, flops_2m = net.gram_flops(rows, cols), wider.gram_flops(rows, cols)
        per_neuron = (flops_2m - flops_m) / m
        out.append(TileCosts(count, rows, cols, diag, flops_m - per_neuron * m, per_neuron,
                             float(2 * rows * cols * squares), float(2 * rows * cols * masks),
                             _finish_flops(net, rows, cols, flops_m - per_neuron * m),
                             _partial_bytes(net, rows, cols, diag),
                             float(rows * cols * elem), float(rows if diag else rows + cols)))
    return out


def _partial_bytes(net: Network, rows: int, cols: int, diag: bool) -> float:
    """A GramPartial's float64 sums (fntk_dist.ntk.partial): rows x cols per neuron-summed
    term, G (n x k) for a RANK term (once on a diagonal tile), and a deep net's backprop
    signal into the last layer's features."""
    layer = net.layers[-1]
    span = rows if diag else rows + cols
    entries = sum(span * layer.k if g.role is Role.RANK else rows * cols
                  for g in last_groups(net))
    if lower_groups(net):
        entries += span * layer.feature_dim
    return float(entries * FLOAT64_BYTES)


def _finish_flops(net: Network, rows: int, cols: int, features: float) -> float:
    """A root's finish (ntk.empirical.finish_gram): each point's features (the FLOPs
    every actor repeats), then per term the n x n product of its other factor (features for
    ROWS, G and the inputs for RANK) and the Hadamard product."""
    layer = net.layers[-1]
    other = {Role.ROWS: layer.feature_dim, Role.RANK: (layer.k or 0) + layer.d, Role.READOUT: 0}
    flops = features
    for g in last_groups(net):
        flops += 2 * rows * cols * other[g.role] + rows * cols
    return float(max(flops, rows * cols))


def kernel_seconds(c: TileCosts, shard: int, rates: Rates, block: int | None = None) -> float:
    """One actor's seconds on one tile of shape c over `shard` neurons: the call, the FLOPs it
    repeats, its products at the rate of its neuron blocks (block, else the device's default),
    its pre-activations' passes and its products' reads of their operands."""
    if block is not None:
        inner = min(shard, block)
    elif rates.gpu:
        inner = shard
    else:
        inner = min(shard, default_block(_Neurons(shard), c.rows + c.cols))
    per_neuron, counted = c.per_neuron_flops, c.count_flops
    operand_rows = c.rows + c.cols
    if c.diagonal and not rates.gpu:  # gram_terms.symmetric_blocks: the upper blocks only
        cut = 1.0 - symmetric_share(c.rows)
        per_neuron, counted = per_neuron - cut * c.square_flops, counted * (1.0 - cut)
        operand_rows = symmetric_operand_rows(c.rows)
    squares = c.square_flops / (2 * c.rows * c.cols)  # the square products per neuron
    return (rates.call_s + c.fixed_flops / rates.peak_flops
            + (per_neuron - counted) * shard / rates.rate(inner)
            + counted * shard / rates.rate(inner, counts=True)
            + c.activations * shard * rates.activation_s
            + squares * operand_rows * shard * rates.operand_s)


def reduction_levels(width: int) -> int:
    """Partials a root's tile waits for in turn: the other W - 1 shards' tree, ceil(log2
    (W - 1)) levels, then its sum into the root."""
    return (math.ceil(math.log2(width - 1)) if width > 2 else 0) + (width > 1)


def tile_phases(c: TileCosts, shard: int, width: int, rates: Rates, block: int | None = None
                ) -> dict[str, float]:
    """One tile's seconds in each phase a job times (fntk_dist.gram.tiles.PHASES), its root
    writing it beside the store: the root's kernel over `shard` neurons alone on its core, its
    wait for the sum of the other W - 1 shards (their tree's links and calls), the finish, the
    tile file, and the driver's commit."""
    return {"partial": kernel_seconds(c, shard, rates, block),
            "wait": reduction_levels(width) * (rates.call_s
                                               + c.partial_bytes / rates.link_bytes_s),
            "finish": rates.finish_s + c.finish_flops / rates.finish_flops,
            "stage": c.tile_bytes / rates.store_bytes_s,
            "commit": rates.commit_s + c.tile_bytes / rates.flush_bytes_s}


def phase_seconds(costs: list[TileCosts], m: int, grid: tuple[int, int], rates: Rates
                  ) -> dict[str, float]:
    """The model's seconds per tile, averaged over the sweep, of each phase a job times
    (tile_phases' keys, fntk_dist.gram.tiles.PHASES): the root's own partial (its kernel at
    the shared rate when actors share the cores, and its group's cold start spread over the
    group's tiles), its wait for the others' sum (their tree's links and calls), the finish,
    the tile file (the root's three stretched where actors outnumber the cores), the
    driver's commit."""
    width, rows = grid
    shard = math.ceil(m / width)
    tiles = sum(c.count for c in costs)
    actors = width * rows
    slow = rates.slowdown(actors)
    # More actors than cores time-share them: a root's own work stretches by actors / cores.
    stretch = max(1.0, actors / rates.cores) if rates.cores is not None else 1.0
    out: dict[str, float] = {}
    for c in costs:
        for name, s in tile_phases(c, shard, width, rates).items():
            out[name] = out.get(name, 0.0) + c.count * s
    out["partial"] = out["partial"] * slow + rates.cold_s * rows
    for name in ("partial", "finish", "stage"):
        out[name] *= stretch
    return {name: s / tiles for name, s in out.items()}


def predict(costs: list[TileCosts], m: int, width: int, rows: int, rates: Rates,
            block: int | None = None) -> Prediction:
    """One sweep of the tiles `costs` on `width` x `rows` actors (efficiency left 0: see
    plan, which compares with one actor)."""
    shard = math.ceil(m / width)  # the widest shard sets the pace of its tile
    tiles = sum(c.count for c in costs)
    kernel = root = comm = driver = moved = 0.0
    slow = rates.slowdown(width * rows)
    for c in costs:
        t = tile_phases(c, shard, width, rates, block)
        kernel += c.count * t["partial"] * slow
        comm += c.count * t["wait"]
        moved += c.count * c.partial_bytes * (width > 1)
        driver += c.count * t["commit"]
        if rates.shared_store:
            root += c.count * (t["finish"] + t["stage"])
        else:  # the root sends the finished tile, the driver writes it
            root += c.count * (t["finish"] + rates.call_s + c.tile_bytes / rates.link_bytes_s)
            driver += c.count * (c.tile_bytes / rates.link_bytes_s + t["stage"])
            moved += c.count * c.tile_bytes / width  # one actor in W sends it
    # Tiles are dealt to the group with the fewest pending: each takes about ceil(T / R) of
    # them, so a group's share of the sweep's work is ceil(T / R) / T.
    share = math.ceil(tiles / rows) / tiles
    compute_s, comm_s = (kernel + root) * share + rates.cold_s, comm * share
    group_s = compute_s + comm_s
    per_group = math.ceil(tiles / rows)
    # A pipeline: the driver commits a group's last tile after it, and it cannot commit faster
    # than its own path allows; the slower path sets the pace.
    total = max(group_s + driver / tiles, driver + group_s / per_group)
    if rates.cores is not None:
        # Actors and the driver share the host's cores. More actors than cores time-share
        # them: each runs at cores / actors of one, and so does a group's chain of tiles (its
        # first tile's cold start, its kernels, its root's wait for the others and finish).
        busy = width * rows * kernel * share + root + driver
        total = max(total, busy / rates.cores, group_s * width * rows / rates.cores)
    return Prediction(width, rows, compute_s, comm_s, driver, moved * share, total, 0.0)


@dataclass(frozen=True)
class _Neurons:
    """A shard's neuron count, as default_block reads it."""

    m_local: int


def factor_pairs(workers: int, m: int) -> list[tuple[int, int]]:
    """Every (W, R) with W * R = workers and at most m width shards."""
    return [(w, workers // w) for w in range(1, workers + 1) if workers % w == 0 and w <= m]


def plan(model: ModelConfig, n: int, d: int, tile: int, workers: int, rates: Rates,
         block: int | None = None, tile_dtype: str | None = None) -> list[Prediction]:
    """Predictions for every grid shape of `workers` actors, fastest first; efficiency
    against one actor on the same tiles."""
    costs = tile_costs(model, d, n, tile, tile_dtype)
    alone = predict(costs, model.m, 1, 1, rates, block).total_s
    shapes = [predict(costs, model.m, w, r, rates, block)
              for w, r in factor_pairs(workers, model.m)]
    shapes = [replace(p, efficiency=alone / (workers * p.total_s)) for p in shapes]
    return sorted(shapes, key=lambda p: (p.total_s, p.width))


def rates_for(cfg: RunConfig) -> Rates:
    """cuda actors: an H100 in the net's dtype; otherwise (cpu, auto) this host's CPU rates."""
    return h100_rates(cfg.model.dtype) if cfg.gram.device == "cuda" else CPU_RATES


def choose_grid(cfg: RunConfig, n: int, d: int, tile: int, workers: int) -> tuple[int, int]:
    """(W, R), W * R == workers, of least predicted sweep time for cfg's net on n points of
    dimension d in tiles of `tile` rows."""
    best = plan(cfg.model, n, d, tile, workers, rates_for(cfg), cfg.gram.block,
                cfg.gram.dtype)[0]
    return best.width, best.rows
