"""Autoencoder and denoising autoencoder: decoder shapes, the reconstruction MSE, clean targets, learning, resume."""

import pytest
import torch
from pretextkit import check_learns, check_pretext_resume, layout_images, settings

from ssl_components.backbones import normalize
from ssl_components.methods import build_method
from ssl_components.methods.autoencoder import Autoencoder, DenoisingAutoencoder
from ssl_components.pretext import add_noise


def _method(name, in_channels=1, *overrides):
    torch.manual_seed(0)
    return build_method(settings(name, *overrides).pretrain, in_channels)


def _slow_mse(a, b):
    total = 0.0
    for u, v in zip(a.double().flatten().tolist(), b.double().flatten().tolist()):
        total += (u - v) ** 2
    return total / a.numel()


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 28, 28), (1, 12, 20)])
def test_decoder_returns_an_image_of_the_input_size_in_range(shape):
    method = _method("autoencoder", shape[0])
    x = torch.rand(4, *shape) * 2 - 1
    recon, h = method.reconstruct(x)
    assert recon.shape == x.shape and h.shape == (4, method.backbone.out_dim)
    assert recon.abs().max() <= 1


def test_autoencoder_loss_is_the_reconstruction_mse():
    method = _method("autoencoder")
    assert type(method) is Autoencoder and method.views == "single"
    x = normalize(layout_images(4)[0])
    loss, z = method.training_step([x])
    with torch.no_grad():  # train mode: the same batch gives the same batch-norm statistics
        recon, h = method.reconstruct(x)
    assert loss.item() == pytest.approx(_slow_mse(recon, x), rel=1e-5)
    assert not z.requires_grad
    torch.testing.assert_close(z, h)


def test_denoising_autoencoder_reconstructs_the_clean_view_from_a_noisy_one():
    method = _method("denoising_autoencoder", 1, "pretrain.denoise_std=0.3")
    assert isinstance(method, DenoisingAutoencoder) and method.std == 0.3
    x = normalize(layout_images(4)[0])
    step = int(method.rng.step)
    loss, _ = method.training_step([x])
    noisy = add_noise(x, 0.3, method.rng.at(step))
    assert (noisy - x).std().item() == pytest.approx(0.3, rel=0.1)
    with torch.no_grad():
        recon, _ = method.reconstruct(noisy)
    assert loss.item() == pytest.approx(_slow_mse(recon, x), rel=1e-5)  # the target is the clean view
    assert loss.item() != pytest.approx(_slow_mse(recon, noisy), rel=1e-3)
    assert int(method.rng.step) == step + 1


@pytest.mark.parametrize("name", ["autoencoder", "denoising_autoencoder"])
def test_learns_on_layout_images(tmp_path, name):
    print(check_learns(tmp_path, name))


@pytest.mark.parametrize("name", ["autoencoder", "denoising_autoencoder"])
def test_resume_matches_an_uninterrupted_run(tmp_path, name):
    model = check_pretext_resume(tmp_path, name)
    assert any(k.startswith("decoder.") for k in model)
    assert ("rng.step" in model) == (name == "denoising_autoencoder")
