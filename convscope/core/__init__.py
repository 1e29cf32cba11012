"""Layer addressing, the recorded forward pass and the DeconvNet."""

from convscope.core.deconv import DeconvNet, Projections, Targets, select
from convscope.core.layers import LayerRef, layer_names, resolve_layer

__all__ = [
    "DeconvNet",
    "LayerRef",
    "Projections",
    "Targets",
    "layer_names",
    "resolve_layer",
    "select",
]
