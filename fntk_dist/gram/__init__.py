"""Gram jobs: compute a net's NTK Gram over a data set and summarise its spectrum."""

from .single import run_gram

__all__ = ["run_gram"]
