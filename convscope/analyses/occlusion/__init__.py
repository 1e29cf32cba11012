"""Occlusion sensitivity (Zeiler & Fergus, Fig. 7) with exact incremental inference.

from convscope.analyses.occlusion import occlusion
result = occlusion(model, image, patch=32, stride=8)   # method="exact" by default
result.probability, result.activation, result.top_class  # maps over occluder positions
result.save("out/cat")                                   # occlusion.json + maps.npz
"""

from convscope.analyses.occlusion.incremental import Incremental, Patch, full_macs
from convscope.analyses.occlusion.sweep import (
    METHODS,
    OcclusionResult,
    default_layer,
    fill_values,
    occlusion,
    positions,
    resolve_label,
)

__all__ = [
    "METHODS",
    "Incremental",
    "OcclusionResult",
    "Patch",
    "default_layer",
    "fill_values",
    "full_macs",
    "occlusion",
    "positions",
    "resolve_label",
]
