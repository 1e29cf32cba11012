"""Real photos that come with pip-installed packages, for the demo and the tests.

scikit-image ships a tabby cat (`chelsea`), an espresso (`coffee`) and a rocket; matplotlib
ships a portrait of Grace Hopper; scikit-learn ships two photos (a temple and a flower).
"""

from __future__ import annotations

import os

import numpy as np

from convscope.errors import ConvscopeError

# name -> (how to get it, an ImageNet class it shows, or None)
SAMPLES = {
    "chelsea": "tabby",
    "coffee": "espresso",
    "rocket": "missile",
    "grace_hopper": "military uniform",
    "china": "palace",
    "flower": "daisy",
}


def sample_image(name: str) -> np.ndarray:
    """H x W x 3 uint8 photo named `name` (one of `SAMPLES`)."""
    try:
        if name in ("chelsea", "coffee", "rocket"):
            import skimage.data

            return np.asarray(getattr(skimage.data, name)())
        if name == "grace_hopper":
            import matplotlib
            from PIL import Image

            path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
            return np.asarray(Image.open(path).convert("RGB"))
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            return np.asarray(load_sample_image(f"{name}.jpg"))
    except ImportError as e:
        raise ConvscopeError(
            f"the sample photo {name!r} needs {e.name}; "
            "install it with pip install 'convscope[demo]'"
        ) from e
    raise ConvscopeError(f"unknown sample photo {name!r}; use one of {', '.join(SAMPLES)}")
