"""Rotation prediction: the four rotated copies, the cross-entropy, learning and resume."""

import pytest
import torch
from pretextkit import check_learns, check_pretext_resume, layout_images, settings, slow_cross_entropy

from ssl_components.backbones import normalize
from ssl_components.methods import build_method
from ssl_components.methods.rotation import RotationPrediction


def _method():
    torch.manual_seed(0)
    return build_method(settings("rotation").pretrain, 1)


def test_loss_is_the_cross_entropy_of_the_rotation_labels():
    method = _method()
    assert isinstance(method, RotationPrediction) and method.views == "single"
    x = normalize(layout_images(6)[0])
    loss, z = method.training_step([x])
    x4 = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    with torch.no_grad():  # train mode: the same batch gives the same batch-norm statistics
        h = method.backbone(x4)
        logits = method.head(h)
    labels = torch.arange(4).repeat_interleave(6)
    assert loss.item() == pytest.approx(slow_cross_entropy(logits, labels), rel=1e-5)
    assert z.shape == (6, method.backbone.out_dim) and not z.requires_grad
    torch.testing.assert_close(z, h[:6])  # the un-rotated copies' features feed the collapse check
    loss.backward()
    assert all(p.grad is not None for p in method.head.parameters())


def test_eval_features_are_those_of_the_view_and_images_must_be_square():
    method = _method().eval()
    x = normalize(layout_images(4)[0])
    with torch.no_grad():
        torch.testing.assert_close(method.training_step([x])[1], method.backbone(x))
    with pytest.raises(ValueError, match="square"):
        method.training_step([x[:, :, :, :12]])


def test_learns_on_layout_images(tmp_path):
    print(check_learns(tmp_path, "rotation"))


def test_resume_matches_an_uninterrupted_run(tmp_path):
    model = check_pretext_resume(tmp_path, "rotation")
    assert any(k.startswith("head.") for k in model)
