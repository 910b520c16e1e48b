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

    def grad(im):
        return np.abs(np.diff(im.astype(float), axis=1)).mean()

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


def test_blur_recipe_draws_every_kind_and_refuses_bad_ones():
    recipe = synth.BlurRecipe()
    rng = np.random.default_rng(0)
    kernels = [recipe.kernel(rng) for _ in range(200)]
    assert any(k is None for k in kernels)  # "none": sharp crops too, so sharp photos are left alone
    sizes = {k.shape for k in kernels if k is not None}
    assert len(sizes) > 20  # a new kernel nearly every time
    assert all(abs(k.sum() - 1) < 1e-5 and max(k.shape) <= 2 * recipe.margin for k in kernels if k is not None)
    with pytest.raises(ValueError, match="unknown"):
        synth.BlurRecipe(kinds={"motoin": 1.0})
    with pytest.raises(ValueError, match="low <= high"):
        synth.BlurRecipe(linear_length=(20, 5))
    with pytest.raises(ValueError, match="non-negative"):
        synth.BlurRecipe(kinds={"linear": 0.0})


def test_degrade_crop_blurs_with_real_context(real_photo):
    # a deterministic kernel (a disk of radius 5), so the expected blur can be computed on the whole photo
    recipe = synth.BlurRecipe(
        kinds={"defocus": 1.0}, defocus_radius=(5, 5), noise_sigma=(0, 0), jpeg_prob=0, gamma_prob=0
    )
    blurred, sharp = synth.degrade_crop(real_photo, 64, np.random.default_rng(1), recipe)
    assert blurred.shape == sharp.shape == (64, 64, 3)
    windows = np.lib.stride_tricks.sliding_window_view(real_photo[..., 0], (64, 64))
    rows, cols = np.where((windows == sharp[..., 0]).all(axis=(2, 3)))
    assert len(rows) == 1  # the sharp crop is a window of the photo
    i, j = rows[0], cols[0]
    whole = synth.apply_kernel(real_photo, synth.normalise_kernel(synth.defocus_kernel(5)))
    # its blur is the photo's blur there, borders included: the margin gave the kernel the real context
    assert np.abs(whole[i : i + 64, j : j + 64].astype(int) - blurred).max() <= 1
    # JPEG and noise change the pixels but keep the picture
    noisy = synth.BlurRecipe(kinds={"none": 1.0}, noise_sigma=(2, 2), jpeg_prob=1.0)
    out, kernel = synth.degrade(real_photo, np.random.default_rng(0), noisy)
    assert kernel is None and not np.array_equal(out, real_photo) and np.abs(out.astype(int) - real_photo).mean() < 6


def test_defocus_kernel_is_a_centred_disk():
    k = synth.normalise_kernel(synth.defocus_kernel(4.0))
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    c = k.shape[0] // 2
    assert (
        k[c, c] == k.max() and np.allclose(k, k.T, atol=1e-3 * k.max()) and np.allclose(k, k[::-1], atol=1e-3 * k.max())
    )
    assert k.sum() / k.max() == pytest.approx(np.pi * 4.0**2, rel=0.05)  # the disk's area, anti-aliased edges included
