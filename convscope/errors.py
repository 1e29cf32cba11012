"""The one exception family for mistakes a user can fix.

Library code raises these with a message that names the thing and says what to do; the
CLI prints that message on one line and exits with status 2. Anything else is a bug.
"""

from __future__ import annotations


class ConvscopeError(Exception):
    """A user error: bad input, an unknown name, a file that cannot be used."""


class LayerNotFoundError(ConvscopeError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedLayerError(ConvscopeError):
    """A layer or operation the DeconvNet has no rule for."""


class ImageError(ConvscopeError):
    """An image that cannot be read or used."""


class WeightsError(ConvscopeError):
    """Weights that cannot be loaded into the model."""


class UntrustedCheckpointError(WeightsError):
    """A pickle-based checkpoint that the user has not said to trust."""
