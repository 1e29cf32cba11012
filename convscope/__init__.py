"""convscope: see inside convolutional networks the way Zeiler & Fergus did."""

from convscope.analyses.occlusion import occlusion
from convscope.core import DeconvNet, LayerRef, resolve_layer
from convscope.errors import ConvscopeError
from convscope.models import alexnet, load, zfnet

__version__ = "0.1.0"
__all__ = [
    "ConvscopeError",
    "DeconvNet",
    "LayerRef",
    "alexnet",
    "load",
    "occlusion",
    "resolve_layer",
    "zfnet",
]
