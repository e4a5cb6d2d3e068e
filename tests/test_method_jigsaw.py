"""Jigsaw (whole-image variant): the shuffled input, the cross-entropy, the saved permutation set, learning, resume."""

import pytest
import torch
from pretextkit import check_learns, check_pretext_resume, layout_images, settings, slow_cross_entropy

from ssl_components.backbones import normalize
from ssl_components.errors import ConfigError
from ssl_components.methods import build_method
from ssl_components.methods.jigsaw import Jigsaw
from ssl_components.pretext import jigsaw_permutations, shuffle_tiles


def _method(*overrides):
    torch.manual_seed(0)
    return build_method(settings("jigsaw", *overrides).pretrain, 1)


def test_loss_is_the_cross_entropy_of_the_drawn_permutations():
    method = _method()
    assert isinstance(method, Jigsaw) and method.views == "single"
    x = normalize(layout_images(8)[0])
    step = int(method.rng.step)
    loss, z = method.training_step([x])
    assert int(method.rng.step) == step + 1  # a fresh draw every step
    shuffled, labels = shuffle_tiles(x, 2, method.perms, method.rng.at(step))
    with torch.no_grad():  # train mode: the same batch gives the same batch-norm statistics
        logits = method.head(method.backbone(shuffled))
        clean = method.backbone(x)
    assert not torch.equal(shuffled, x) and len(set(labels.tolist())) > 1
    assert loss.item() == pytest.approx(slow_cross_entropy(logits, labels), rel=1e-5)
    assert z.shape == (8, method.backbone.out_dim) and not z.requires_grad
    torch.testing.assert_close(z, clean)  # the collapse check sees the unshuffled views


def test_permutation_set_follows_the_settings_and_is_a_buffer():
    method = _method()
    assert torch.equal(method.perms, jigsaw_permutations(4, 24, seed=0))
    assert "perms" in method.state_dict() and "perms" not in dict(method.named_parameters())
    method = _method("pretrain.jigsaw_grid=3", "pretrain.jigsaw_permutations=30")
    assert method.perms.shape == (30, 9) and method.head[-1].out_features == 30
    x = normalize(layout_images(4)[0])  # 16x16 -> 15x15 (5x5 tiles)
    loss, z = method.training_step([x])
    assert torch.isfinite(loss) and z.shape == (4, method.backbone.out_dim)
    with pytest.raises(ConfigError, match=r"jigsaw_permutations=25 exceeds the 24 permutations of a 2x2 grid"):
        _method("pretrain.jigsaw_permutations=25")


def test_learns_on_layout_images(tmp_path):
    print(check_learns(tmp_path, "jigsaw"))


def test_resume_restores_the_permutations_and_the_draws(tmp_path):
    model = check_pretext_resume(tmp_path, "jigsaw")
    assert torch.equal(model["perms"], jigsaw_permutations(4, 24, seed=0))
    assert int(model["rng.step"]) == 4  # 2 epochs of 2 steps (64 images, batch 32)
