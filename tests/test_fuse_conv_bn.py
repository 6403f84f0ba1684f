"""fuse_conv_bn: an inference copy with BatchNorm folded, equal to the model it came from."""

from __future__ import annotations

import torch
from torch import nn

from ecgrisk.models import create_encoder
from ecgrisk.models.classifier import ECGClassifier
from ecgrisk.models.layers import ConvBNAct, fuse_conv_bn


def _trained_like(seed: int = 0) -> ECGClassifier:
    """A classifier whose BatchNorms hold non-trivial running statistics and affine terms."""
    torch.manual_seed(seed)
    model = ECGClassifier(create_encoder("xresnet1d18", base_channels=8), num_classes=5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    return model.eval()


def test_folded_model_gives_the_same_logits_and_has_no_batchnorm_in_its_conv_blocks():
    model = _trained_like()
    fused = fuse_conv_bn(model)
    x = torch.randn(6, 12, 250)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-5)
    blocks = [m for m in fused.modules() if isinstance(m, ConvBNAct)]
    assert blocks and all(isinstance(b[1], nn.Identity) and b[0].bias is not None for b in blocks)


def test_the_model_it_came_from_is_untouched_and_still_trains():
    model = _trained_like()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_conv_bn(model.train())
    assert model.training  # the copy is put in eval mode, not the original
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
