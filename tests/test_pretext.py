"""Pretext-task transforms: rotations, jigsaw permutation sets, tile shuffling, noise, per-step generators."""

import itertools
import math

import pytest
import torch

from ssl_components.pretext import StepRNG, add_noise, jigsaw_permutations, rotations, shuffle_tiles


def _images(b=5, c=2, h=6, w=6, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_rotations_are_the_four_quarter_turns_with_labels():
    x = _images()
    x4, labels = rotations(x)
    assert x4.shape == (20, 2, 6, 6) and labels.tolist() == [k for k in range(4) for _ in range(5)]
    for k in range(4):
        torch.testing.assert_close(x4[5 * k : 5 * (k + 1)], torch.rot90(x, k, dims=(2, 3)), rtol=0, atol=0)
    torch.testing.assert_close(x4[5:10, 0, 0, -1], x[:, 0, -1, -1], rtol=0, atol=0)  # 90 degrees counter-clockwise
    y = x
    for _ in range(4):
        y = rotations(y)[0][len(x) : 2 * len(x)]  # the 90-degree copy, four times
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="square"):
        rotations(torch.zeros(2, 1, 4, 6))


def test_jigsaw_permutations_are_distinct_deterministic_and_far_apart():
    everything = jigsaw_permutations(4, 24, seed=3)
    assert everything.dtype == torch.long and everything.shape == (24, 4)
    assert {tuple(p) for p in everything.tolist()} == set(itertools.permutations(range(4)))
    assert torch.equal(jigsaw_permutations(9, 10, seed=1), jigsaw_permutations(9, 10, seed=1))
    assert not torch.equal(jigsaw_permutations(9, 10, seed=1), jigsaw_permutations(9, 10, seed=2))

    # far apart: 4 of 4 tiles form a Latin square (every pair differs everywhere); 30 random permutations of
    # 9 tiles have pairs that differ in only 3-4 positions, greedy ones in at least 7
    for n_tiles, count, min_hamming in ((4, 4, 4), (4, 10, 2), (9, 30, 7), (16, 12, 14)):
        perms = jigsaw_permutations(n_tiles, count, seed=0)
        assert perms.shape == (count, n_tiles) and len({tuple(p) for p in perms.tolist()}) == count
        assert torch.equal(perms.sort(dim=1).values, torch.arange(n_tiles).expand(count, -1))  # permutations
        dist = (perms[:, None] != perms[None]).sum(-1) + n_tiles * torch.eye(count, dtype=torch.long)
        assert int(dist.min()) >= min_hamming, (n_tiles, count, int(dist.min()))
    with pytest.raises(ValueError, match="24 permutations"):
        jigsaw_permutations(4, 25)


def test_shuffle_tiles_moves_tiles_and_the_inverse_permutation_restores_the_image():
    grid, x = 3, _images(b=7, h=10, w=11)  # cropped to 9 x 9 (centrally: rows 0-8, columns 1-9)
    perms = jigsaw_permutations(grid * grid, 8, seed=0)
    g = torch.Generator().manual_seed(5)
    out, labels = shuffle_tiles(x, grid, perms, g)
    assert out.shape == (7, 2, 9, 9) and labels.shape == (7,) and int(labels.max()) < 8
    assert torch.equal(labels, torch.randint(8, (7,), generator=torch.Generator().manual_seed(5)))
    cropped = x[:, :, 0:9, 1:10]
    tile = lambda img, t: img[:, 3 * (t // 3) : 3 * (t // 3) + 3, 3 * (t % 3) : 3 * (t % 3) + 3]  # noqa: E731
    for i in range(7):
        p = perms[labels[i]]
        for t in range(9):  # output tile t is input tile p[t]
            torch.testing.assert_close(tile(out[i], t), tile(cropped[i], int(p[t])), rtol=0, atol=0)
    inverse = perms[labels].argsort(dim=1)
    for i in range(7):  # a one-permutation set: the inverse of sample i's permutation restores it
        back, label = shuffle_tiles(out[i : i + 1], grid, inverse[i : i + 1])
        assert label.tolist() == [0]
        torch.testing.assert_close(back, cropped[i : i + 1], rtol=0, atol=0)


def test_add_noise_has_the_requested_std_and_is_reproducible():
    x = torch.zeros(64, 1, 32, 32)
    a = add_noise(x, 0.3, torch.Generator().manual_seed(1))
    assert a.std().item() == pytest.approx(0.3, rel=0.02) and abs(a.mean().item()) < 0.01
    assert torch.equal(a, add_noise(x, 0.3, torch.Generator().manual_seed(1)))
    assert torch.equal(add_noise(x + 1, 0.0, torch.Generator()), x + 1)


def test_step_rng_draws_per_step_and_lives_in_the_state_dict():
    torch.manual_seed(0)
    rng = StepRNG()
    first = torch.rand(3, generator=rng.next())
    second = torch.rand(3, generator=rng.next())
    assert int(rng.step) == 2 and not torch.equal(first, second)
    assert torch.equal(torch.rand(3, generator=rng.at(1)), second)
    copy = StepRNG()
    copy.load_state_dict(rng.state_dict())
    assert torch.equal(torch.rand(3, generator=copy.next()), torch.rand(3, generator=rng.next()))
    assert math.isfinite(float(rng.seed))
