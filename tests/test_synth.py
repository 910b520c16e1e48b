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


@pytest.mark.parametrize("kind", synth.KINDS)
def test_kernels_do_not_shift_the_image(kind):
    """Each kernel's centre of mass is exactly its centre pixel, so blur moves no edge on average.

    A leftover sub-pixel offset is a random misalignment between the blurred and sharp image of a pair,
    which no network can undo; it cost one of the sample's held-out pairs 2 dB of input PSNR before
    motion PSFs were centred exactly.
    """
    for seed in range(20):
        k = synth.random_kernel(np.random.default_rng(seed), kind, max_len=40)
        rows, cols = np.mgrid[: k.shape[0], : k.shape[1]]
        # within a hundredth of a pixel (a drawn line's anti-aliasing leaves thousandths); it was up to 0.5
        assert (rows * k).sum() / k.sum() == pytest.approx((k.shape[0] - 1) / 2, abs=0.01)
        assert (cols * k).sum() / k.sum() == pytest.approx((k.shape[1] - 1) / 2, abs=0.01)
    # and on an image: a bright square's centre of mass stays where it was
    img = np.zeros((96, 96, 3), np.uint8)
    img[44:52, 40:48] = 255
    out = synth.apply_kernel(img, k)[..., 0].astype(np.float64)
    rows, cols = np.mgrid[:96, :96]
    assert (rows * out).sum() / out.sum() == pytest.approx(47.5, abs=0.05)
    assert (cols * out).sum() / out.sum() == pytest.approx(43.5, abs=0.05)
