"""Wide two-layer networks, dense and factorized, and their fixed random sketches."""

from .cost import NetCost, net_cost
from .net import MODES, TwoLayerNet
from .sketches import SKETCHES, InputSketch, OutputSketch, fwht

__all__ = [
    "MODES", "SKETCHES", "InputSketch", "NetCost", "OutputSketch", "TwoLayerNet", "fwht",
    "net_cost",
]
