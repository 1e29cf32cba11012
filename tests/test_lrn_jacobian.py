"""The closed-form transpose of local response normalization's Jacobian equals autograd's."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope import DeconvNet


@pytest.mark.parametrize("size", [3, 4, 5])
def test_lrn_jacobian_policy_equals_autograd(size):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 10, 3), nn.LocalResponseNorm(size, alpha=0.3, beta=0.75, k=2))
    x = torch.randn(2, 3, 12, 12) * 3
    ours = DeconvNet(net, norm="jacobian").project(x, "1", [4], mode="map")[:, 0]
    # Reference: autograd through the LRN alone, seeded with channel 4's map, then the
    # transposed convolution.
    h = net[0](x).detach().requires_grad_(True)
    y = net[1](h)
    seed = torch.zeros_like(y)
    seed[:, 4] = y[:, 4].detach()
    (grad,) = torch.autograd.grad(y, h, seed)
    ref = F.conv_transpose2d(grad, net[0].weight)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
