"""Wide ReLU networks as stacks of dense or factorized layers, and their fixed random sketches."""

from .blocks import default_block, neuron_blocks
from .cost import NetCost, net_cost
from .groups import Group, Role
from .layer import MODES, Layer
from .net import TwoLayerNet
from .network import Network
from .sketches import SKETCHES, InputSketch, OutputSketch, fwht

__all__ = [
    "MODES", "SKETCHES", "Group", "InputSketch", "Layer", "NetCost", "Network", "OutputSketch",
    "Role", "TwoLayerNet", "default_block", "fwht", "net_cost", "neuron_blocks",
]
