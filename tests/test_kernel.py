"""The kernel-aware route (deblur.kernel): blind estimation, Wiener deconvolution, the per-photo decision, and
the route as an engine every job loads by name."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from deblur.data.synth import expose, linear_kernel, normalise_kernel
from deblur.evaluation.protocols import score
from deblur.kernel.deconvolve import wiener
from deblur.kernel.estimate import EstimateConfig, consensus, estimate_kernel, kernel_similarity, straightness
from deblur.kernel.route import ROUTES, decide


def arc_kernel(size: int = 41, radius: int = 12, start: int = 0, end: int = 200) -> np.ndarray:
    """A curved shake path (an arc of a circle), uneven along its length, as recorded kernels are."""
    k = np.zeros((size, size), np.float32)
    cv2.ellipse(k, (size // 2, size // 2), (radius, radius + 3), 0, start, end, 1.0, 1, cv2.LINE_AA)
    k *= np.linspace(0.4, 1.0, size, dtype=np.float32)[None, :]  # the hand lingers more at one end
    return normalise_kernel(cv2.GaussianBlur(k, (0, 0), 0.5))


@pytest.fixture(scope="module")
def shaken(real_photo):
    """The photo and its blur by a curved 20-odd px kernel (in linear light, as a camera blurs)."""
    k = arc_kernel()
    return real_photo, expose(real_photo, k, noise_sigma=0.0, rng=np.random.default_rng(0)), k


def test_similarity_straightness_and_consensus():
    arc, line = arc_kernel(), normalise_kernel(linear_kernel(17, 30))
    shifted = np.pad(arc, ((3, 0), (0, 5)))
    assert kernel_similarity(arc, shifted) > 0.99  # the same shape anywhere
    assert kernel_similarity(arc, line) < 0.7
    assert straightness(line) < 0.15 < 0.3 < straightness(arc)
    assert straightness(cv2.circle(np.zeros((15, 15), np.float32), (7, 7), 5, 1.0, -1)) > 0.95
    pick, agreement = consensus([line, arc, shifted])
    assert pick in (1, 2) and 0.6 < agreement < 0.9  # the two arcs agree, the line does not


def test_estimate_finds_a_curved_kernel(shaken):
    """Blind: only the blurred photo goes in; the kernel found is the one that blurred it."""
    _, blur, k = shaken
    gray = cv2.cvtColor(blur, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    found = estimate_kernel(gray[:256, :256], EstimateConfig(ksize=45, cg_iters=3))
    assert found.shape == (45, 45) and found.min() >= 0 and abs(found.sum() - 1) < 1e-4
    assert kernel_similarity(found, k) > 0.75, kernel_similarity(found, k)


def test_wiener_with_the_true_kernel(shaken):
    sharp, blur, k = shaken
    out = wiener(blur / 255.0, k)
    assert out.shape == blur.shape and out.dtype == np.float32
    restored = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    assert score(restored, sharp, "shift")[0] > score(blur, sharp, "shift")[0] + 4
    gray = wiener(blur[..., 1] / 255.0, k)  # a single channel keeps its shape
    assert gray.shape == blur.shape[:2]
    assert np.allclose(gray, out[..., 1], atol=1e-4)


def test_decide_leaves_sharp_photos_to_the_network(real_photo):
    """A blind estimator invents a kernel for a sharp photo (down to ~15 dB on the dev photos): the gate keeps it out."""
    d = decide(real_photo / 255.0, ROUTES["deblur-shake-v1"])
    assert (d.route, d.reason) == ("network", "sharp") and d.kernel is None


def test_route_engine_by_name(shaken):
    """`load_engine("deblur-shake-v1")`: shaken photos deconvolved with their own kernel, sharp ones through the
    network exactly as the network alone gives them, bit depth kept, a fingerprint of its own."""
    from deblur.inference import load_engine
    from deblur.inference.load import check_engine_request, model_fingerprint
    from deblur.models.reference import CheckpointError, resolve_checkpoint

    sharp, blur, _ = shaken
    check_engine_request("deblur-shake-v1")
    route = load_engine("deblur-shake-v1", "onnxruntime", "cpu")
    network = load_engine("default", "onnxruntime", "cpu")
    assert route.info.backend == "onnxruntime" and route.info.source == "deblur-shake-v1"
    assert model_fingerprint("deblur-shake-v1") != model_fingerprint("default")
    with pytest.raises(CheckpointError, match="kernel-aware route.*deblur-nafnet-v1"):
        resolve_checkpoint("deblur-shake-v1")  # what compile and training would read: one line, not "not found"
    out_blur, out_sharp = route.deblur_images([blur, sharp])
    reasons = [d.reason for d in route.decisions]
    assert sorted(reasons) == ["shake", "sharp"], reasons
    assert score(out_blur, sharp, "shift")[0] > score(blur, sharp, "shift")[0] + 2
    assert np.array_equal(out_sharp, network.deblur_image(sharp))
    deep = route.deblur_image(blur.astype(np.uint16) * 257)
    assert deep.dtype == np.uint16 and route.decisions[0].route == "kernel"
    assert np.abs(deep / 257.0 - out_blur).mean() < 1.0
