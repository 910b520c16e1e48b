"""Procedural dead-leaves images: the power law, exact top-down coverage, seeded, natural colours."""

import numpy as np
import pytest

from deblur.data import deadleaves


def test_power_law_radii_follow_the_law():
    rng = np.random.default_rng(0)
    r = deadleaves.power_law_radii(rng, 200_000, 1.0, 100.0, alpha=3.0)
    assert r.min() >= 1.0 and r.max() <= 100.0
    # density r^-3 on [1, 100]: P(r > 2) = (2^-2 - 100^-2) / (1 - 100^-2) ≈ 0.2499
    assert (r > 2).mean() == pytest.approx(0.2499, abs=0.005)


def test_images_are_seeded_covered_and_coloured_like_their_palette():
    palette = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
    a = deadleaves.dead_leaves(96, seed=5, palette=palette, texture_prob=0.0, text_prob=0.0)
    b = deadleaves.dead_leaves(96, seed=5, palette=palette, texture_prob=0.0, text_prob=0.0)
    c = deadleaves.dead_leaves(96, seed=6, palette=palette, texture_prob=0.0, text_prob=0.0)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # every pixel is a leaf (no black background left) and, away from anti-aliased edges, a palette colour
    flat = a.reshape(-1, 3).astype(int)
    nearest = np.abs(flat[:, None, :] - palette[None].astype(int)).sum(-1).min(1)
    assert np.mean(nearest == 0) > 0.5 and flat.sum(1).min() > 0
    # edges of every scale: large uniform regions and many small leaves
    grad = np.abs(np.diff(a.astype(int), axis=1)).sum(-1)
    assert 0.05 < np.mean(grad > 0) < 0.9


def test_ensure_images_makes_once_and_reuses(tmp_path):
    palette = np.random.default_rng(0).integers(0, 256, (64, 3), dtype=np.uint8)
    paths = deadleaves.ensure_images(2, 64, 10, palette, str(tmp_path))
    stamps = [tmp_path.joinpath(p).stat().st_mtime_ns for p in paths]
    again = deadleaves.ensure_images(2, 64, 10, palette, str(tmp_path))
    assert again == paths and [tmp_path.joinpath(p).stat().st_mtime_ns for p in again] == stamps
    other = deadleaves.ensure_images(1, 64, 10, palette[::-1].copy(), str(tmp_path))  # another palette: another file
    assert other[0] not in paths
