"""Gram jobs: a net's NTK Gram over a data set, tile by tile, in one process or on Ray actors,
into one resumable tile store; its spectrum and summary."""

from .tile_store import TileStore, TileStoreError, iter_tiles, load_gram

__all__ = ["TileStore", "TileStoreError", "iter_tiles", "load_gram"]
