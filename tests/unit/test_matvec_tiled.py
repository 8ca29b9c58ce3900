"""The depth-1 mat-vec's two passes over tiles of points (fntk_dist/ntk/matvec.py) against
torch.func Jacobians in float64: point counts that are not a multiple of the tile, fewer points
than one tile, the default tile and block sizes, the cross-Gram form, and columns of v taken in
several rounds."""

from __future__ import annotations

import pytest
import torch
from conftest import net_grid

from fntk_dist import TwoLayerNet, autograd_ntk, empirical_ntk, ntk_matvec
from fntk_dist.ntk import matvec

F64 = torch.float64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _net(mode: str, sketch: str | None, d: int, m: int, k: int = 4,
         train_output: bool = True) -> TwoLayerNet:
    return TwoLayerNet(d, m, mode, None if mode == "dense" else k, sketch, train_output, seed=3,
                       dtype=F64)


def _points(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("mode,sketch", net_grid())
@pytest.mark.parametrize("n,tile", [(23, 5), (6, 10)], ids=["ragged-tiles", "one-short-tile"])
def test_tiled_matvec_is_the_autograd_gram_times_v(mode, sketch, n, tile):
    """Every term (ROWS, RANK, READOUT): 23 points in tiles of 5 (the last one of 3), and 6
    points in a tile of 10; neuron blocks of 7 of 30 (the last one of 2)."""
    net = _net(mode, sketch, d=8, m=30)
    x, x2 = _points(n, 8, 0), _points(n + 4, 8, 1)
    v = torch.randn(n + 4, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    ref = autograd_ntk(net, x)
    assert _rel(ntk_matvec(net, x, v[:n], block=7, tile=tile), ref @ v[:n]) < 1e-12
    assert _rel(ntk_matvec(net, x, v[:n, 0], block=7, tile=tile), ref @ v[:n, 0]) < 1e-12
    cross = autograd_ntk(net, x, x2)
    assert _rel(ntk_matvec(net, x, v, block=7, tile=tile, x2=x2), cross @ v) < 1e-12


@pytest.mark.parametrize("mode,sketch", [("sketch_in", "srht"), ("lowrank", None),
                                         ("sketch_out", "countsketch"), ("dense", None)])
def test_default_sizes_split_points_and_neurons(mode, sketch):
    """No block or tile given: the CPU default cuts 700 neurons into blocks of CPU_BLOCK and
    300 points into tiles of CPU_TILE_ACTIVATIONS / CPU_BLOCK, the last of each partial."""
    blocks, tile = matvec._sizes(_net(mode, sketch, 16, 700), 300, 300, None, None)
    assert len(blocks) == 2 and blocks[1][1] - blocks[1][0] < matvec.CPU_BLOCK
    assert tile < 300 and 300 % tile != 0
    net = _net(mode, sketch, d=16, m=700, k=8)
    x, x2 = _points(300, 16, 3), _points(40, 16, 4)
    v = torch.randn(300, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert _rel(ntk_matvec(net, x, v), empirical_ntk(net, x) @ v) < 1e-12
    assert _rel(ntk_matvec(net, x2, v, x2=x), empirical_ntk(net, x2, x) @ v) < 1e-12


def test_columns_of_v_in_several_rounds():
    """A dense net whose per-column state (d x m for W's M) allows only a few columns of v per
    round: 40 columns take several rounds of the two passes, and equal H V column by column."""
    net = _net("dense", None, d=64, m=4096)
    per_round = matvec.STATE_FLOATS // (64 * 4096 + 4096)
    assert 1 < per_round < 40
    x = _points(30, 64, 6)
    v = torch.randn(30, 40, generator=torch.Generator().manual_seed(7), dtype=F64)
    assert _rel(ntk_matvec(net, x, v, tile=8), empirical_ntk(net, x) @ v) < 1e-12


@pytest.mark.parametrize("tile", [0, -3, 2.5, True])
def test_bad_tile_is_refused(tile):
    net = _net("sketch_in", "gaussian", d=6, m=10)
    with pytest.raises(ValueError, match=r"^tile: expected an integer >= 1"):
        ntk_matvec(net, _points(4, 6, 8), torch.ones(4, dtype=F64), tile=tile)


@pytest.mark.parametrize("mode,sketch", net_grid())
def test_states_of_parts_of_the_points_add_up_to_the_matvec(mode, sketch):
    """The split mat-vec of a grid's row groups: pass 1 on three parts of X2 (uneven), their
    states added, pass 2 on two parts of X: H(X, X2) v of the net with V frozen (its term is
    the driver's, rank_term), in tiles of 4 points and blocks of 7 neurons."""
    net = _net(mode, sketch, d=8, m=30)
    if mode in ("sketch_out", "lowrank"):
        net.layers[0].V.requires_grad_(False)
    x, x2 = _points(13, 8, 0), _points(17, 8, 1)
    v = torch.randn(17, generator=torch.Generator().manual_seed(2), dtype=F64)
    parts = [(0, 5), (5, 6), (6, 17)]
    state = sum((matvec.matvec_state(net, x2[p0:p1], v[p0:p1], block=7, tile=4)
                 for p0, p1 in parts[1:]), matvec.matvec_state(net, x2[:5], v[:5], 7, 4))
    got = torch.cat([matvec.matvec_apply(net, x[:9], state, tile=4),
                     matvec.matvec_apply(net, x[9:], state)])
    assert _rel(got, autograd_ntk(net, x, x2) @ v) < 1e-12


def test_the_split_matvec_refuses_a_trained_v_and_a_v_of_another_length():
    with pytest.raises(ValueError, match="net: the split mat-vec"):
        matvec.matvec_state(_net("lowrank", None, 8, 30), _points(5, 8, 0),
                            torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="v: expected shape"):
        matvec.matvec_state(_net("dense", None, 8, 30), _points(5, 8, 0),
                            torch.ones(4, dtype=F64))
