"""Context-encoder inpainting: the masked squares, the masked-pixel loss, the step's input and loss, learning,
resume."""

import pytest
import torch
from pretextkit import check_learns, check_pretext_resume, layout_images, settings

from ssl_components.backbones import normalize
from ssl_components.methods import build_method
from ssl_components.methods.inpainting import Inpainting, masked_pixel_mse, square_masks, square_side


def _method(*overrides):
    torch.manual_seed(0)
    return build_method(settings("inpainting", *overrides).pretrain, 1)


def _slow_masked_mse(pred, target, mask):
    """Mean of (pred - target)² over the masked pixels of every channel, by an explicit loop, in float64."""
    total, count = 0.0, 0
    b, c, h, w = target.shape
    for i in range(b):
        for k in range(c):
            for r in range(h):
                for s in range(w):
                    if mask[i, 0, r, s]:
                        total += (float(pred[i, k, r, s]) - float(target[i, k, r, s])) ** 2
                        count += 1
    return total / count


def test_square_side_covers_the_fraction_and_leaves_pixels_visible():
    assert square_side(16, 16, 0.25) == 8 and square_side(28, 28, 0.25) == 14
    assert square_side(12, 20, 0.25) == 8  # round(sqrt(60)) = 8
    assert square_side(16, 16, 0.001) == 1 and square_side(16, 16, 0.99) == 15


def test_central_and_random_squares():
    center = square_masks(3, (16, 16), 0.25, random=False)
    assert center.shape == (3, 1, 16, 16) and center.dtype == torch.bool
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:12, 4:12] = True
    assert all(torch.equal(m[0], expected) for m in center)

    masks = square_masks(64, (12, 20), 0.25, random=True, generator=torch.Generator().manual_seed(0))
    assert (masks.sum(dim=(1, 2, 3)) == 64).all()  # an 8 x 8 square in every image, never cut by the border
    for m in masks[:, 0]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert len(rows) == len(cols) == 8 and rows[-1] - rows[0] == 7 and cols[-1] - cols[0] == 7
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) > 20  # corners vary from image to image
    again = square_masks(64, (12, 20), 0.25, random=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)  # the same generator state gives the same squares


def test_masked_loss_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 2, 6, 5, generator=g), torch.randn(3, 2, 6, 5, generator=g)
    mask = torch.rand(3, 1, 6, 5, generator=g) > 0.6
    assert masked_pixel_mse(pred, target, mask).item() == pytest.approx(_slow_masked_mse(pred, target, mask), rel=1e-5)


def test_masked_loss_ignores_the_unmasked_pixels():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(4, 1, 16, 16, generator=g)
    pred = torch.randn(4, 1, 16, 16, generator=g)
    mask = square_masks(4, (16, 16), 0.25, random=True, generator=g)
    loss = masked_pixel_mse(pred, target, mask).item()
    outside = torch.where(mask, pred, pred + 10 * torch.randn(pred.shape, generator=g))
    assert not torch.equal(outside, pred)
    assert masked_pixel_mse(outside, target, mask).item() == loss
    inside = torch.where(mask, pred + 0.5, pred)
    assert masked_pixel_mse(inside, target, mask).item() != pytest.approx(loss, rel=1e-3)
    assert masked_pixel_mse(torch.where(mask, target, pred), target, mask).item() == 0.0  # perfect inside only


@pytest.mark.parametrize("region", ["random", "center"])
def test_step_encodes_the_masked_view_and_scores_the_masked_pixels(region):
    method = _method(f"pretrain.inpaint_region={region}", "pretrain.inpaint_fraction=0.3")
    assert type(method) is Inpainting and method.name == "inpainting" and method.views == "single"
    x = normalize(layout_images(8)[0])
    step = int(method.rng.step)
    loss, z = method.training_step([x])
    assert int(method.rng.step) == step + 1  # a fresh draw every step
    mask = method.mask(x, method.rng.at(step))
    assert (mask.sum(dim=(1, 2, 3)) == 81).all()  # round(sqrt(0.3 * 256)) = 9
    assert (len({tuple(m.nonzero()[0].tolist()) for m in mask}) > 1) == (region == "random")
    masked = x.masked_fill(mask, 0.0)
    assert (masked[mask] == 0).all() and torch.equal(masked[~mask], x[~mask])
    with torch.no_grad():  # train mode: the same batch gives the same batch-norm statistics
        h = method.backbone(masked)
        pred = method.decoder(h, (16, 16))
    assert loss.item() == pytest.approx(_slow_masked_mse(pred, x, mask), rel=1e-5)
    assert z.shape == (8, method.backbone.out_dim) and not z.requires_grad
    torch.testing.assert_close(z, h)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())


def test_learns_on_layout_images(tmp_path):
    # The pretext budget (40 epochs, margin 0.1) at the default inpaint_fraction 0.5. Over layout-image seeds
    # 0, 5, ..., 55 the kNN gain over the random-init encoder was 0.027-0.176 (7 of 12 seeds above the margin;
    # seed 0, used here, 0.12): inpainting beats random init on every seed, but by less than the autoencoders.
    # With 0.25 it was -0.05-0.20 (4 of 12); with 80 epochs at 0.5, 0.055-0.223 (11 of 12).
    print(check_learns(tmp_path, "inpainting"))


def test_resume_matches_an_uninterrupted_run(tmp_path):
    model = check_pretext_resume(tmp_path, "inpainting")
    assert any(k.startswith("decoder.") for k in model)
    assert int(model["rng.step"]) == 4  # 2 epochs of 2 steps: the resumed run continued the square draws
