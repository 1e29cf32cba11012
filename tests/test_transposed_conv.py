"""The product form of the transposed convolution equals PyTorch's kernel."""

import pytest
import torch
import torch.nn.functional as F

from convscope.core import transposed_conv
from convscope.core.transposed_conv import conv_transpose2d


@pytest.mark.parametrize(
    ("channels", "kernel", "stride", "dilation"),
    [(3, (7, 7), (2, 2), (1, 1)), (3, (11, 11), (4, 4), (1, 1)), (1, (3, 5), (2, 1), (2, 3))],
)
def test_product_form_equals_conv_transpose(channels, kernel, stride, dilation, monkeypatch):
    # Small pieces, so that the loop over pieces is exercised too.
    monkeypatch.setattr(transposed_conv, "PIECE_BYTES", 1)
    g = torch.randn(5, 16, 9, 11, generator=torch.Generator().manual_seed(0))
    w = torch.randn(16, channels, *kernel, generator=torch.Generator().manual_seed(1))
    ours = conv_transpose2d(g, w, stride, dilation, 1)
    ref = F.conv_transpose2d(g, w, stride=stride, dilation=dilation)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
