"""Behaviour of the batched, per-sample augmentation (ssl_components.augment)."""

import torch

from ssl_components.augment import augment_batch, two_views
from ssl_components.config import CacheViewsConfig

PLAIN = dict(crop_scale=(1.0, 1.0), crop_ratio=(0.75, 4 / 3), flip_p=0.0, brightness=0.0, contrast=0.0, blur_p=0.0, noise_std=0.0)


def _images(n=8, c=1, h=28, w=28, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_dtype_shape_device():
    for c, h, w in [(1, 28, 28), (3, 20, 32)]:
        x = _images(5, c, h, w)
        y = augment_batch(x, CacheViewsConfig(blur_p=0.5, noise_std=0.05), _gen())
        assert y.dtype == torch.uint8 and y.shape == x.shape and y.device == x.device
    assert augment_batch(_images(0), CacheViewsConfig(), _gen()).shape == (0, 1, 28, 28)


def test_parameters_differ_per_sample():
    x = _images(1).repeat(64, 1, 1, 1)
    y = augment_batch(x, CacheViewsConfig(blur_p=0.5), _gen())
    distinct = {bytes(img.numpy().tobytes()) for img in y}
    assert len(distinct) >= 60  # a shared-parameter transform would give 1


def test_same_seed_same_output_different_seed_different():
    x = _images(16)
    cfg = CacheViewsConfig(blur_p=0.5, noise_std=0.02)
    assert torch.equal(augment_batch(x, cfg, _gen(3)), augment_batch(x, cfg, _gen(3)))
    assert not torch.equal(augment_batch(x, cfg, _gen(3)), augment_batch(x, cfg, _gen(4)))
    a, b = two_views(x, cfg, _gen(3))
    assert not torch.equal(a, b)


def test_identity_settings_keep_the_image():
    x = _images(16)
    y = augment_batch(x, CacheViewsConfig(**PLAIN), _gen())
    assert (y.int() - x.int()).abs().max() <= 1


def test_flip_without_crop_is_exact():
    x = _images(16, 3, 12, 20)
    cfg = CacheViewsConfig(**{**PLAIN, "flip_p": 1.0, "crop_ratio": (0.5, 2.0)})  # 20/12 allowed: whole image
    assert torch.equal(augment_batch(x, cfg, _gen()), x.flip(-1))


def test_brightness_bounds_on_constant_image():
    x = torch.full((256, 1, 16, 16), 100, dtype=torch.uint8)
    y = augment_batch(x, CacheViewsConfig(**{**PLAIN, "brightness": 0.3, "contrast": 0.4, "crop_scale": (0.3, 1.0)}), _gen())
    per_image = y.view(256, -1)
    assert torch.equal(per_image.min(1).values, per_image.max(1).values)  # crop and contrast keep it constant
    assert y.min() >= 70 and y.max() <= 130  # 100 * [0.7, 1.3]
    assert y.min() < 80 and y.max() > 120 and len(y.unique()) > 30  # and the range is used


def test_crop_zooms_in():
    x = torch.zeros(32, 1, 28, 28, dtype=torch.uint8)
    x[:, :, :, 14:] = 255  # left half black, right half white
    y = augment_batch(x, CacheViewsConfig(**{**PLAIN, "crop_scale": (0.1, 0.3)}), _gen())
    white = (y > 127).float().mean(dim=(1, 2, 3))
    assert (white < 0.05).any() or (white > 0.95).any()  # some crops fall within one half
    assert white.std() > 0.1


def test_blur_and_noise_change_the_image():
    x = _images(8)
    base = CacheViewsConfig(**PLAIN)
    blurred = augment_batch(x, base.model_copy(update={"blur_p": 1.0, "blur_sigma": (1.0, 1.5)}), _gen())
    assert blurred.float().std() < x.float().std() * 0.8  # blur smooths random noise
    noisy = augment_batch(x, base.model_copy(update={"noise_std": 0.1}), _gen())
    assert 0 < (noisy.int() - x.int()).abs().float().mean() < 40
