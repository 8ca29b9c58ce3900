"""Wide ReLU networks as stacks of dense or factorized layers, and their fixed random sketches."""

from .blocks import default_block, neuron_blocks
from .cost import NetCost, net_cost
from .groups import Group, Role
from .layer import MODES, Layer
from .net import TwoLayerNet
from .network import Network
from .sketches import SKETCHES, InputSketch, OutputSketch, fwht
from .stack import LayerSpec, build_network

__all__ = [
    "MODES", "SKETCHES", "Group", "InputSketch", "Layer", "LayerSpec", "NetCost", "Network",
    "OutputSketch", "Role", "TwoLayerNet", "build_network", "default_block", "fwht", "net_cost",
    "neuron_blocks",
]
