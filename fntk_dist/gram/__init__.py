"""Gram jobs: a net's NTK Gram over a data set, tile by tile, in one process or on Ray actors,
into one resumable tile store; its spectrum and summary.

`run_gram_job` is in fntk_dist.gram.job (it imports torch); reading a run folder needs only
`load_gram` and `iter_tiles`.
"""

from .tile_store import TileStore, TileStoreError, iter_tiles, load_gram

__all__ = ["TileStore", "TileStoreError", "iter_tiles", "load_gram"]
