import numpy as np
import pytest

from deblur.data import synth


def test_seeded_and_reproducible(real_photo):
    a = synth.synthesize(real_photo, seed=7)
    b = synth.synthesize(real_photo, seed=7)
    c = synth.synthesize(real_photo, seed=8)
    assert np.array_equal(a.blurred, b.blurred) and np.array_equal(a.kernel, b.kernel)
    assert not np.array_equal(a.kernel, c.kernel)
    assert synth.pair_seed(1, "x.png") == synth.pair_seed(1, "x.png") != synth.pair_seed(2, "x.png")


@pytest.mark.parametrize("kind", synth.KINDS)
def test_physical_kernels_are_normalised(kind, real_photo):
    rng = np.random.default_rng(0)
    k = synth.random_kernel(rng, kind)
    assert k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-5)
    assert k.shape[0] % 2 == 1 and k.shape[1] % 2 == 1
    out = synth.apply_kernel(real_photo, k)
    assert out.shape == real_photo.shape and out.dtype == np.uint8
    # blur conserves light: mean brightness barely moves, detail (gradient energy) drops
    assert abs(out.mean() - real_photo.mean()) < 1.0
    grad = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()
    assert grad(out) < grad(real_photo)


def test_trajectory_stays_on_canvas_and_psf_grows_with_exposure():
    rng = np.random.default_rng(3)
    x = synth.random_trajectory(rng, canvas=64, expl=0.005)
    assert x.real.min() >= 0 and x.real.max() < 64 and x.imag.min() >= 0 and x.imag.max() < 64
    short, full = synth.trajectory_psf(x, fraction=0.1), synth.trajectory_psf(x, fraction=1.0)
    assert full.sum() > short.sum() > 0
    assert (full > 0).sum() >= (short > 0).sum()


def test_delta_kernel_is_identity(real_photo):
    delta = np.zeros((3, 3), np.float32)
    delta[1, 1] = 1
    assert np.array_equal(synth.apply_kernel(real_photo, delta), real_photo)


def test_kernel_is_convolved_not_correlated():
    img = np.zeros((21, 21, 3), np.uint8)
    img[10, 10] = 255
    k = np.zeros((5, 5), np.float32)
    k[2, 2], k[2, 4] = 0.5, 0.5  # mass to the right of centre
    out = synth.apply_kernel(img, k)
    assert out[10, 12, 0] > 0 and out[10, 8, 0] == 0  # a point spreads as the PSF, not mirrored


def test_deblurgan_mode_stretches_contrast(real_photo):
    k = synth.random_kernel(np.random.default_rng(1), "motion")
    out = synth.apply_kernel(real_photo, k, mode="deblurgan")
    assert out.min() == 0 and out.max() == 255


def test_gamma_and_noise_options(real_photo):
    k = synth.random_kernel(np.random.default_rng(2), "gaussian")
    plain = synth.apply_kernel(real_photo, k)
    assert not np.array_equal(synth.apply_kernel(real_photo, k, gamma=2.2), plain)
    noisy = synth.apply_kernel(real_photo, k, noise_sigma=5, rng=np.random.default_rng(0))
    assert 2 < np.std(noisy.astype(float) - plain) < 8
    with pytest.raises(ValueError):
        synth.apply_kernel(real_photo, k, mode="magic")
    with pytest.raises(ValueError):
        synth.random_kernel(np.random.default_rng(0), "boxcar")
