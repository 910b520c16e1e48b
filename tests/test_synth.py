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


# The camera's parts of a BlurRecipe: each on its own, seeded, doing what its docstring says.


def test_shake_field_blurs_differently_across_the_frame_and_stays_registered(real_photo):
    img = real_photo[:160, :160]
    field = synth.shake_field(np.random.default_rng(4), (160, 160), length=30, roll_px=20, frame=0.5)
    corners = [field.kernel_at(x, y) for x, y in ((0, 0), (159, 0), (0, 159), (159, 159))]
    assert len({k.shape for k in corners}) > 1 or max(np.abs(a - corners[0]).max() for a in corners) > 0.01
    blurred = synth.expose(img, field)
    drift = [abs((field.positions(x, y) - complex(x, y)).mean()) for x, y in ((80, 80), (0, 0), (159, 159))]
    assert max(drift) < 1.0  # paths centred on their mean: the blurred picture stays registered with the sharp
    # where the field is nearly uniform (no roll), it is the convolution with its local kernel
    still = synth.shake_field(np.random.default_rng(4), (160, 160), length=30, roll_px=0, frame=8.0)
    as_kernel = synth.expose(img, still.kernel_at(80, 80))
    inner = (slice(40, 120), slice(40, 120))
    assert np.abs(synth.expose(img, still)[inner].astype(int) - as_kernel[inner]).mean() < 1.5
    again = synth.shake_field(np.random.default_rng(4), (160, 160), length=30, roll_px=20, frame=0.5)
    assert np.array_equal(synth.expose(img, again), blurred)  # seeded


def test_saturated_highlights_streak_brighter_than_white_allows():
    scene = np.full((96, 96, 3), 20, np.uint8)
    scene[46:50, 46:50] = 255  # a lamp: clipped at white in the sharp photo, far brighter in the world
    k = synth.normalise_kernel(synth.linear_kernel(21, 0))
    plain = synth.expose(scene, k, gamma=2.2)
    lamp = synth.expose(scene, k, gamma=2.2, highlight_gain=8.0)
    row = slice(46, 50)
    assert lamp[row].max() == 255 and plain[row].max() < 200  # the streak saturates only with its real energy
    assert (lamp[row] >= 250).sum() > 4 * (scene[row] >= 250).sum() / 3  # ... along its length, not just the lamp
    assert np.array_equal(lamp[:30], plain[:30])  # dark parts of the scene are left as they were


def test_shot_noise_grows_with_light_and_read_noise_does_not():
    ramp = np.zeros((200, 100, 3), np.uint8)
    ramp[:100], ramp[100:] = 30, 230
    one = np.ones((1, 1), np.float32)
    shot = synth.expose(ramp, one, shot_noise=8.0, rng=np.random.default_rng(0)).astype(float)
    read = synth.expose(ramp, one, noise_sigma=4.0, rng=np.random.default_rng(0)).astype(float)
    dark, bright = shot[:100].std(), shot[100:].std()
    assert bright > 2 * dark and bright == pytest.approx(8.0 * np.sqrt(230 / 255), rel=0.1)
    assert read[:100].std() == pytest.approx(read[100:].std(), rel=0.1)


def test_recipe_camera_parts_are_drawn_only_when_on(real_photo):
    img = real_photo[:120, :120]
    plain = synth.BlurRecipe(kinds={"linear": 1.0}, jpeg_prob=0, gamma_prob=0.5)
    camera = plain.model_copy(update={"saturation_prob": 1.0, "shot_noise": (3.0, 6.0), "crf_gamma": (1.8, 2.6)})
    a, ka = synth.degrade(img, np.random.default_rng(5), plain)
    b, kb = synth.degrade(img, np.random.default_rng(5), camera)
    assert np.array_equal(ka, kb) and not np.array_equal(a, b)  # same kernel; the camera changed the picture
    shake = synth.BlurRecipe(kinds={"shake": 1.0}, shake_length=(20, 20), jpeg_prob=0)
    out, k = synth.degrade(img, np.random.default_rng(1), shake)
    assert k is not None and abs(k.sum() - 1) < 1e-5 and (k > 0).sum() >= 10  # the PSF at the centre: a path
    field = synth.shake_field(np.random.default_rng(1), (120, 120), length=20, roll_px=0)
    assert np.abs(np.diff(field.positions(60, 60))).sum() == pytest.approx(20, rel=0.1)  # its length, as asked
    assert shake.margin >= 20 + shake.shake_roll_px
    for bad in ({"crf_gamma": (0.5, 2.0)}, {"shake_length": (10, 200)}, {"saturation_gain": (0.5, 2)}):
        with pytest.raises(ValueError):
            synth.BlurRecipe(**bad)
