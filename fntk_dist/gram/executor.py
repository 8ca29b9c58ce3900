"""Where a Gram job's tiles are computed: the executor interface and the local executor.

An executor answers, for each tile's span (rows, cols), GramPartials on the CPU whose neuron
ranges together cover all m neurons (one per shard, or shards' partials already summed). The
job sums them, finishes and stores the tiles (fntk_dist.gram.tiles), whatever the executor.
The local executor is one shard, the whole net in this process; the Ray one
(fntk_dist.distributed.gram_actors) is a grid of actors, width shards x row groups, each
group's shards summing their partials among themselves.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

import torch

from ..models.network import Network
from ..ntk import GramPartial
from ..ntk.empirical import partial_sums
from ..ntk.gram_terms import unit_readout
from ..runtime import peak_rss_bytes, rss_bytes

if TYPE_CHECKING:
    from ..config import RunConfig

Span = tuple[tuple[int, int], tuple[int, int]]  # a tile's rows [r0, r1) and cols [c0, c1)


class TileExecutor(Protocol):
    def partials(self, spans: Iterable[Span]) -> Iterator[list[GramPartial]]:
        """Each span's partials (covering all neurons), on the CPU, in the order given."""

    def info(self) -> dict:
        """The summary keys device, shard_nodes, worker_peak_rss_bytes, worker_base_rss_bytes."""

    def close(self) -> None:
        """Releases the workers."""


# Whether each net's readout is +-1 (ntk.gram_terms.unit_readout), with the readout tensor and
# its version counter when asked: a Gram job's net never changes, so the host synchronisation
# that answers it happens once per net, not per tile; a readout replaced or changed in place (an
# optimizer step bumps the version) is asked again.
_UNIT_READOUT: weakref.WeakKeyDictionary[Network, tuple[torch.Tensor, int, bool]] = \
    weakref.WeakKeyDictionary()


def _counts(net: Network) -> bool:
    a = net.a
    held = _UNIT_READOUT.get(net)
    if held is None or held[0] is not a or held[1] != a._version:
        held = _UNIT_READOUT[net] = (a, a._version, unit_readout(a.detach()))
    return held[2]


def span_partial(net: Network, x: torch.Tensor, span: Span, block: int | None) -> GramPartial:
    """The partial of net's neurons for one tile of the points x, on the CPU, where the job
    finishes tiles.

    x: the job's points in the net's dtype and on its device, checked when the data was read
    (finite, (n, d)); so a tile queues device work only, and its one synchronisation is the
    copy of its sums to the CPU.
    """
    counts = _counts(net)
    (r0, r1), (c0, c1) = span
    x2 = None if (r0, r1) == (c0, c1) else x[c0:c1]  # a diagonal tile: the symmetric path
    return partial_sums(net, x[r0:r1], x2, block, None, counts).cpu()


class LocalExecutor:
    """The whole net in this process, on `device` (gram.device, resolved)."""

    def __init__(self, cfg: RunConfig, x: torch.Tensor, device: torch.device) -> None:
        self.base_rss = rss_bytes()  # before the net: what the tiles' work adds is above it
        self.device = device
        self.net = cfg.model.build(x.shape[1], device=device)
        self.x = x.to(device)
        self.block = cfg.gram.block

    def partials(self, spans: Iterable[Span]) -> Iterator[list[GramPartial]]:
        for span in spans:
            yield [span_partial(self.net, self.x, span, self.block)]

    def info(self) -> dict:
        return {"device": str(self.device), "shard_nodes": [],
                "worker_peak_rss_bytes": peak_rss_bytes(), "worker_base_rss_bytes": self.base_rss}

    def close(self) -> None:
        """Nothing to release: the net goes with this object."""
