"""The kernel-aware route (deblur.kernel): blind estimation, Wiener deconvolution, the per-photo decision, and
the route as an engine every job loads by name."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from deblur.data.synth import expose, linear_kernel, normalise_kernel
from deblur.evaluation.protocols import score
from deblur.kernel.deconvolve import (
    centre_of_mass,
    flat_noise_sigma,
    noise_adaptive_nsr,
    noise_sigma,
    total_variation,
    wiener,
)
from deblur.kernel.estimate import consensus, estimate_kernel, kernel_similarity, similarities
from deblur.kernel.route import (
    ROUTES,
    SHAKE_CONFIGS,
    decide,
    estimate_side_by_side,
    overshoot,
    pick,
    textured_crop,
    trusted,
)

from conftest import ROOT


def arc_kernel(size: int = 41, radius: int = 12, start: int = 0, end: int = 200) -> np.ndarray:
    """A curved shake path (an arc of a circle), uneven along its length, as recorded kernels are."""
    k = np.zeros((size, size), np.float32)
    cv2.ellipse(k, (size // 2, size // 2), (radius, radius + 3), 0, start, end, 1.0, 1, cv2.LINE_AA)
    k *= np.linspace(0.4, 1.0, size, dtype=np.float32)[None, :]  # the hand lingers more at one end
    return normalise_kernel(cv2.GaussianBlur(k, (0, 0), 0.5))


def sharp_photo() -> np.ndarray:
    """A sharp, textured photo at its own resolution (the repository keeps it): a 321×481 centre crop of Grace Hopper.
    Not the `real_photo` stand-in, which without ../shared is a resized cover and already soft."""
    from deblur.images import read_image

    img = read_image(str(ROOT / "tests" / "data" / "photos" / "grace_hopper.jpg"))[..., :3]
    top, left = (img.shape[0] - 321) // 2, (img.shape[1] - 481) // 2
    return np.ascontiguousarray(img[top : top + 321, left : left + 481])


@pytest.fixture(scope="module")
def shaken():
    """The photo and its blur by a curved 30-odd px kernel (in linear light, as a camera blurs)."""
    k, photo = arc_kernel(), sharp_photo()
    return photo, expose(photo, k, noise_sigma=0.0, rng=np.random.default_rng(0)), k


def test_similarity_and_consensus():
    arc, line = arc_kernel(), normalise_kernel(linear_kernel(17, 30))
    shifted = np.pad(arc, ((3, 0), (0, 5)))
    assert kernel_similarity(arc, shifted) > 0.99  # the same shape anywhere
    assert kernel_similarity(arc, line) < 0.7
    medoid, agreement = consensus(similarities([line, arc, shifted]))
    assert medoid in (1, 2) and 0.6 < agreement < 0.9  # the two arcs agree, the line does not


def test_wiener_about_the_centre_of_mass(shaken):
    """An estimate is found only up to a shift, and where it sits in its box is the estimator's accident.
    Deconvolved about its exact centre of mass (a phase ramp: sub-pixel, without re-sampling the kernel), the
    photo comes out in the same place wherever the kernel sits; about its box's centre pixel it moves with it."""
    from deblur import metrics

    sharp, blur, k = shaken
    moved = np.pad(k, ((0, 3), (2, 0)))  # the same kernel 2 px to the right in a bigger box
    assert np.allclose(np.subtract(centre_of_mass(moved), centre_of_mass(k)), (0, 2))

    def psnr(kernel, origin):
        return metrics.psnr(
            np.clip(np.rint(wiener(blur / 255.0, kernel, 0.005, origin) * 255), 0, 255).astype(np.uint8), sharp
        )

    about_mass = [psnr(x, centre_of_mass(x)) for x in (k, moved)]
    assert abs(about_mass[0] - about_mass[1]) < 0.5 and min(about_mass) > metrics.psnr(blur, sharp) + 5, about_mass
    assert psnr(moved, None) < about_mass[1] - 2  # about the box's centre: the photo comes out shifted


def test_pick_prefers_the_kernel_that_deblurs(shaken):
    """Two pairs of schedules agree, one on the true kernel and one on a wrong streak: the pick is the pair whose
    deconvolution is sparsest, the true one; an unconfirmed kernel is never picked
    over a confirmed one; with none confirmed, the medoid."""
    _, blur, k = shaken
    crop = cv2.cvtColor(blur, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    line = normalise_kernel(linear_kernel(25, 100))
    kernels = [normalise_kernel(x) for x in (line, k, np.pad(line, ((0, 2), (2, 0))), np.pad(k, ((1, 0), (0, 1))))]
    sims = similarities(kernels)
    ringing = ROUTES["deblur-shake-v1"].ringing
    best, sparsity = pick(crop, kernels, sims, 0.005, pair=0.8, medoid=0, ringing=ringing)
    assert best in (1, 3) and 0 < sparsity < 2  # its deconvolution's sparsity over the blurred window's
    lone = [k, line, normalise_kernel(np.pad(line, 1))]
    assert pick(crop, lone, similarities(lone), 0.005, pair=0.8, medoid=0, ringing=ringing)[0] in (1, 2)
    none_confirmed = pick(crop, [k, line], similarities([k, line]), 0.005, pair=0.8, medoid=1, ringing=ringing)
    assert none_confirmed == (1, None)


def test_pick_weighs_ringing():
    """A streak read with a faint wide halo around it (as the estimator did on some streak photos): deconvolving
    with it rings, and its ringing is sparser than the true kernel's output (sparsity alone picks it), but it
    throws values past black and white: weighing that (`overshoot`) picks the streak."""
    photo = sharp_photo()
    line = normalise_kernel(linear_kernel(19, 30))
    blur = expose(photo, line, noise_sigma=0.0, rng=np.random.default_rng(0))
    crop = cv2.cvtColor(blur, cv2.COLOR_RGB2GRAY).astype(np.float32)[:, 80:401] / 255
    blob = np.zeros((41, 41), np.float32)
    blob[20, 20] = 1
    blob = cv2.GaussianBlur(blob, (0, 0), 7)
    top, left = (41 - line.shape[0]) // 2, (41 - line.shape[1]) // 2
    halo = blob / blob.max() * 0.2
    halo[top : top + line.shape[0], left : left + line.shape[1]] += line / line.max()
    kernels = [line, normalise_kernel(halo)]
    sims = similarities(kernels)
    assert sims[0, 1] > 0.8  # each confirms the other
    assert pick(crop, kernels, sims, 0.005, pair=0.8, medoid=0, ringing=0.0)[0] == 1  # sparsity alone: the halo
    assert pick(crop, kernels, sims, 0.005, pair=0.8, medoid=0, ringing=ROUTES["deblur-shake-v1"].ringing)[0] == 0
    rings = [overshoot(wiener(crop, k, 0.005, centre_of_mass(k))[20:-20, 20:-20]) for k in kernels]
    assert rings[1] > 10 * rings[0] and overshoot(crop) == 0


def test_estimate_finds_a_curved_kernel(shaken):
    """Blind: only the blurred photo goes in. The route's four schedules on its textured window, and their medoid
    is the kernel that blurred it (each schedule alone fails on some photos; this one's 45 px schedule here)."""
    _, blur, k = shaken
    gray = cv2.cvtColor(blur, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    crop = textured_crop(gray, 321)
    found = [estimate_kernel(crop, cfg) for cfg in SHAKE_CONFIGS]
    assert [f.shape for f in found] == [(n, n) for n in (25, 35, 45, 55)]
    assert all(f.min() >= 0 and abs(f.sum() - 1) < 1e-4 for f in found)
    best, agreement = consensus(similarities(found))
    assert agreement > 0.75 and kernel_similarity(found[best], k) > 0.8, (agreement, kernel_similarity(found[best], k))
    side_by_side = estimate_side_by_side(crop, SHAKE_CONFIGS[:2], threads=2)  # the route's way: the same kernels
    assert all(np.array_equal(a, normalise_kernel(b)) for a, b in zip(side_by_side, found[:2], strict=True))


def test_a_pick_is_trusted_by_agreement_or_vouched_for_by_its_confirmation_and_sparsity():
    """The agreement bar is stricter where sharp and lightly shaken photos overlap (blur score under mild_below);
    below either bar a pick is still trusted when another schedule confirms it and its deconvolution is sparser
    than the window, never when it is unconfirmed (no sparsity) or its deconvolution is no sparser."""
    r = ROUTES["deblur-shake-v1"]
    clear, mild = r.mild_below + 0.1, r.mild_below - 0.1
    assert trusted(r, clear, r.min_agreement, 0.0, None)
    assert not trusted(r, mild, r.min_agreement, 0.0, None) and trusted(r, mild, r.mild_agreement, 0.0, None)
    low = r.min_agreement - 0.1
    assert trusted(r, clear, low, r.vouch_confirmation, r.vouch_sparsity)
    assert trusted(r, mild, low, 0.95, 0.9)
    assert not trusted(r, clear, low, r.vouch_confirmation - 0.01, 0.9)  # not confirmed enough
    assert not trusted(r, clear, low, 0.99, r.vouch_sparsity + 0.01)  # its deconvolution no sparser
    assert not trusted(r, clear, low, 0.99, None)  # no kernel confirmed


def test_wiener_with_the_true_kernel(shaken):
    """Borders included: the FFT is circular, and the padding's far edges met where the photo's borders wrap;
    fading the padding out (`deconvolve._taper`) keeps that jump from ringing back in. The outer 30 px gained
    3.9 dB here without the fade, 6.9 with it."""
    from deblur import metrics

    sharp, blur, k = shaken
    out = wiener(blur / 255.0, k)
    assert out.shape == blur.shape and out.dtype == np.float32
    restored = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    assert score(restored, sharp, "shift")[0] > score(blur, sharp, "shift")[0] + 4
    about = np.clip(np.rint(wiener(blur / 255.0, k, 0.005, centre_of_mass(k)) * 255), 0, 255).astype(np.uint8)
    band = np.ones(sharp.shape[:2], bool)
    band[30:-30, 30:-30] = False

    def gain(sel):
        return metrics.psnr(about[sel][None], sharp[sel][None]) - metrics.psnr(blur[sel][None], sharp[sel][None])

    assert gain(band) > 5.5 and gain(band) > gain(~band) - 4, (gain(band), gain(~band))
    gray = wiener(blur[..., 1] / 255.0, k)  # a single channel keeps its shape
    assert gray.shape == blur.shape[:2]
    assert np.allclose(gray, out[..., 1], atol=1e-4)


def test_total_variation_beats_wiener_on_a_noisy_photo(shaken):
    """With sensor noise on the blur, Wiener either amplifies the noise or blurs the edges back; total variation
    keeps the edges and flattens the noise between. The route's way (each at the photo's own NSR, TV's data weight
    the recipe's over it), with the true kernel: TV gains 0.4 dB more here (25.7 against 25.3). The route picks it for the noisy
    photo only: on the clean one its kernel's errors, not noise, limit the result, and Wiener stays."""
    sharp, clean, k = shaken
    noisy = expose(sharp, k, shot_noise=4.0, noise_sigma=2.0, rng=np.random.default_rng(1))
    recipe = ROUTES["deblur-shake-v1"]
    nsr = noise_adaptive_nsr(noisy / 255.0)
    assert flat_noise_sigma(noisy / 255.0) * 255 >= recipe.tv_from_sigma > flat_noise_sigma(clean / 255.0) * 255
    origin = centre_of_mass(k)

    def u8(x):
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)

    tv = total_variation(noisy / 255.0, k, recipe.tv_fidelity / nsr, origin)
    assert tv.shape == noisy.shape and tv.dtype == np.float32
    psnr = {
        "input": score(noisy, sharp, "shift")[0],
        "wiener": score(u8(wiener(noisy / 255.0, k, nsr, origin)), sharp, "shift")[0],
        "tv": score(u8(tv), sharp, "shift")[0],
    }
    assert psnr["tv"] > psnr["wiener"] + 0.2 and psnr["wiener"] > psnr["input"], psnr
    gray = total_variation(noisy[..., 1] / 255.0, k, recipe.tv_fidelity / nsr, origin)  # one channel: its shape
    assert gray.shape == noisy.shape[:2] and np.allclose(gray, tv[..., 1], atol=1e-4)
    d = decide(noisy / 255.0, recipe)
    assert (d.route, d.deconvolution) == ("kernel", "tv"), d


def test_flat_noise_sigma_tells_texture_from_noise():
    """Fine texture reads as noise to Immerkær's whole-photo estimate; in the flattest tenth of the photo there is
    little texture and all of the noise. Half a photo of fine clean texture beside a smooth half: the whole-photo
    estimate reads 2.5 levels of noise (more than it reads of real noise of σ 2 on a smooth photo), the flat one
    none; with noise of σ 2 levels added, the flat one reads 1.9, over the route's TV gate, also with a third of
    the frame clipped to black."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 1, (256, 128)).astype(np.float32), (0, 0), 0.7)
    smooth = np.tile(np.linspace(0.2, 0.8, 128, dtype=np.float32), (256, 1))
    clean = np.concatenate([0.2 + 0.6 * texture, smooth], axis=1)
    noisy = np.clip(clean + rng.normal(0, 2 / 255, clean.shape).astype(np.float32), 0, 1)
    gate = ROUTES["deblur-shake-v1"].tv_from_sigma
    assert noise_sigma(clean) * 255 > 2 and flat_noise_sigma(clean) * 255 < gate / 2
    assert 1.6 < flat_noise_sigma(noisy) * 255 < 2.3 and flat_noise_sigma(noisy) * 255 > gate
    night = noisy.copy()
    night[:80] = 0  # a third of the frame clipped to black is flat, but not clean: its tiles are left out
    assert flat_noise_sigma(night) * 255 > gate and flat_noise_sigma(np.zeros((64, 64), np.float32)) == 0


def test_decide_leaves_sharp_photos_to_the_network():
    """A blind estimator invents a kernel for a sharp photo (down to ~15 dB on the dev photos): the gate keeps it out."""
    d = decide(sharp_photo() / 255.0, ROUTES["deblur-shake-v1"])
    assert (d.route, d.reason) == ("network", "sharp") and d.kernel is None


def test_route_engine_is_the_default(shaken):
    """`load_engine("default")` is `deblur-shake-v1`: shaken photos deconvolved with their own kernel, sharp and
    tiny ones through the network exactly as the network alone gives them, bit depth kept, a fingerprint of its
    own; where a network is needed (video, compile), "default" is the shipped network."""
    from deblur.inference import load_engine
    from deblur.inference.load import check_engine_request, model_fingerprint, network_of
    from deblur.models.reference import CheckpointError, resolve_checkpoint
    from deblur.models.shipped import NETWORK, shipped_path

    sharp, blur, _ = shaken
    check_engine_request("deblur-shake-v1")
    route = load_engine("default", "onnxruntime", "cpu")
    network = load_engine(NETWORK, "onnxruntime", "cpu")
    assert route.info.backend == "onnxruntime" and route.info.source == "deblur-shake-v1"
    assert model_fingerprint("default") == model_fingerprint("deblur-shake-v1") != model_fingerprint(NETWORK)
    assert network_of("default") == network_of("deblur-shake-v1") == NETWORK == network_of(NETWORK)
    assert resolve_checkpoint("default") == shipped_path(NETWORK)
    with pytest.raises(CheckpointError, match="kernel-aware route.*deblur-nafnet-v1"):
        resolve_checkpoint("deblur-shake-v1")  # what compile and training would read: one line, not "not found"
    out_blur, out_sharp = route.deblur_images([blur, sharp])
    reasons = [d.reason for d in route.decisions]
    assert sorted(reasons) == ["shake", "sharp"], reasons
    assert [d.deconvolution for d in route.decisions if d.route == "kernel"] == ["wiener"]  # a clean photo
    assert score(out_blur, sharp, "shift")[0] > score(blur, sharp, "shift")[0] + 2
    assert np.array_equal(out_sharp, network.deblur_image(sharp))
    tiny = blur[:120, :150]  # under min_side: too few edges to read a kernel from
    assert np.array_equal(route.deblur_image(tiny), network.deblur_image(tiny))
    assert route.decisions[0].reason == "tiny" and route.decisions[0].blur_score is None
    deep = route.deblur_image(blur.astype(np.uint16) * 257)
    assert deep.dtype == np.uint16 and route.decisions[0].route == "kernel"
    assert np.abs(deep / 257.0 - out_blur).mean() < 1.0
