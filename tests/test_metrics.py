import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblur import metrics
from deblur.data.synth import synthesize
from deblur.images import read_image, to_tensor


@pytest.fixture(scope="module")
def photo_pairs(cbsd68):
    pairs = []
    for i, path in enumerate(cbsd68[:6]):
        sharp = read_image(str(path))
        pairs.append((synthesize(sharp, seed=i, max_len=30).blurred, sharp))
    return pairs


def ssim_3d_reference(a: np.ndarray, b: np.ndarray) -> float:
    """MATLAB-style 3-D SSIM written independently: float64, scipy Gaussian σ1.5 over (H, W, C), 'nearest'."""
    a, b = a.astype(np.float64), b.astype(np.float64)

    def f(v):
        return gaussian_filter(v, sigma=1.5, mode="nearest", truncate=5 / 1.5)  # 11 taps per axis

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def test_psnr_matches_skimage(photo_pairs):
    for blur, sharp in photo_pairs:
        assert metrics.psnr(blur, sharp) == pytest.approx(
            peak_signal_noise_ratio(sharp, blur, data_range=255), abs=0.01
        )


def test_basicsr_ssim_matches_skimage(photo_pairs):
    for blur, sharp in photo_pairs:
        ref = structural_similarity(
            sharp, blur, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2
        )
        assert metrics.ssim(blur, sharp, convention="basicsr") == pytest.approx(ref, abs=1e-4)


def test_gopro_ssim_matches_3d_reference(photo_pairs):
    for blur, sharp in photo_pairs:
        assert metrics.ssim(blur, sharp, convention="gopro") == pytest.approx(ssim_3d_reference(blur, sharp), abs=1e-4)


def test_conventions_really_differ_on_blurred_photos(photo_pairs):
    blur, sharp = photo_pairs[0]
    assert abs(metrics.ssim(blur, sharp, "gopro") - metrics.ssim(blur, sharp, "basicsr")) > 0.005


def test_identity_and_batches(photo_pairs):
    blur, sharp = photo_pairs[0]
    assert metrics.psnr(sharp, sharp) == math.inf
    assert metrics.ssim(sharp, sharp) == pytest.approx(1.0)
    tb = torch.stack([to_tensor(b) for b, _ in photo_pairs[:2]])
    ts = torch.stack([to_tensor(s) for _, s in photo_pairs[:2]])
    values = metrics.psnr(tb, ts)
    assert values.shape == (2,)
    assert values[1] == pytest.approx(metrics.psnr(*photo_pairs[1]), abs=1e-9)  # tensors round-trip through uint8


def test_y_channel_and_border_crop(photo_pairs):
    blur, sharp = photo_pairs[0]
    y = metrics.psnr(blur, sharp, y_channel=True)
    ref = peak_signal_noise_ratio(metrics.rgb_to_y(sharp), metrics.rgb_to_y(blur), data_range=255)
    assert y == pytest.approx(ref, abs=1e-9)
    cropped = metrics.psnr(blur, sharp, crop_border=20)
    assert cropped == pytest.approx(
        peak_signal_noise_ratio(sharp[20:-20, 20:-20], blur[20:-20, 20:-20], data_range=255)
    )
    assert "gopro" in metrics.describe_convention("gopro")


@pytest.mark.parametrize(
    "a,b",
    [
        (np.zeros((0, 4, 3), np.uint8), np.zeros((0, 4, 3), np.uint8)),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8)),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)),
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32)),
        (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)),
    ],
)
def test_bad_inputs_raise_value_error(a, b):
    with pytest.raises(ValueError):
        metrics.psnr(a, b)
    with pytest.raises(ValueError):
        metrics.ssim(a, b)


def test_unknown_convention():
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown SSIM convention"):
        metrics.ssim(img, img, convention="matlab2")


def test_lpips_offline_rule(tmp_path, monkeypatch, photo_pairs):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from deblur.pretrained import PretrainedWeightsMissing

    with pytest.raises(PretrainedWeightsMissing):
        metrics.LPIPS()
    lp = metrics.LPIPS(allow_random_weights=True)
    assert not lp.pretrained and "RANDOM" in lp.label
    blur, sharp = photo_pairs[0]
    assert lp(sharp, sharp) == pytest.approx(0.0, abs=1e-6)
    assert lp(blur, sharp) > 0


def test_lpips_loads_backbone_weights_when_given(tmp_path, monkeypatch, photo_pairs):
    from torchvision.models import alexnet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    ref = alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(ref.state_dict(), path)
    lp = metrics.LPIPS(weights_path=str(path))
    assert lp.pretrained
    assert torch.equal(lp.model.net.slice1[0].weight, ref.features[0].weight)


def test_blur_score_is_skimages_blur_effect_and_rises_with_blur(cbsd68):
    """The same sums as scikit-image's reference implementation, for 8-bit, 16-bit and gray photos."""
    import cv2
    from skimage.measure import blur_effect

    from deblur.images import read_image
    from deblur.metrics import blur_score

    for path in cbsd68[:3]:
        photo = read_image(str(path))
        for img, ref in (
            (photo, blur_effect(photo, channel_axis=-1)),
            (photo.astype(np.uint16) * 257, blur_effect(photo.astype(np.uint16) * 257, channel_axis=-1)),
            (photo[..., 1], blur_effect(photo[..., 1])),
        ):
            assert abs(blur_score(img) - ref) < 1e-4, (path.name, img.dtype, img.shape)
        scores = [blur_score(cv2.GaussianBlur(photo, (0, 0), s) if s else photo) for s in (0, 1, 2, 4)]
        assert scores == sorted(scores) and scores[-1] - scores[0] > 0.2, scores
    big = cv2.resize(photo, (2400, 2200))  # over SCORE_WINDOW: scored on its centred full-resolution window
    assert blur_score(big) == blur_score(big[76 : 76 + 2048, 176 : 176 + 2048])
