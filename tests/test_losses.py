import pytest
import torch

from deblur.losses import (
    PerceptualLoss,
    content_loss,
    critic_loss,
    frequency_loss,
    generator_adversarial_loss,
    gradient_penalty,
)
from deblur.pretrained import PretrainedWeightsMissing


class LinearCritic(torch.nn.Module):
    """D(x) = s · <w, x> with ‖w‖ = 1: its input-gradient has norm s everywhere."""

    def __init__(self, shape, scale):
        super().__init__()
        w = torch.randn(shape)
        self.w = torch.nn.Parameter(w / w.norm())
        self.scale = scale

    def forward(self, x):
        return self.scale * (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_zero_for_unit_gradient_norm():
    torch.manual_seed(0)
    real, fake = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    gp = gradient_penalty(LinearCritic((3, 16, 16), 1.0), real, fake)
    assert gp.item() == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("scale,expected", [(3.0, 10 * 4.0), (0.5, 10 * 0.25)])
def test_gradient_penalty_grows_away_from_one(scale, expected):
    torch.manual_seed(0)
    real, fake = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    critic = LinearCritic((3, 16, 16), scale)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx(expected, rel=1e-5)
    gp.backward()  # the penalty is differentiable w.r.t. the critic's weights (create_graph)
    assert critic.w.grad is not None and critic.w.grad.abs().sum() > 0


def test_adversarial_losses_have_the_right_sign():
    real, fake = torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 4, 4), -1.0)
    assert critic_loss("wgan-gp", real, fake).item() == pytest.approx(-3.0)
    assert generator_adversarial_loss("wgan-gp", fake).item() == pytest.approx(1.0)
    for kind in ("lsgan", "vanilla"):
        good = critic_loss(kind, real, fake)
        bad = critic_loss(kind, fake, real)
        assert good < bad
        assert generator_adversarial_loss(kind, real) < generator_adversarial_loss(kind, fake)
    with pytest.raises(ValueError, match="unknown adversarial"):
        critic_loss("hinge", real, fake)


def test_content_loss_is_l1():
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert content_loss(a, b).item() == pytest.approx(0.5)


def test_frequency_loss_charges_missing_detail_more_than_the_pixel_loss_does():
    """A smoothed output and a uniformly shifted one with the same L1 error: the FFT loss tells them
    apart, charging the lost high frequencies (the shift is only the DC term)."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    smooth = torch.nn.functional.avg_pool2d(target, 3, stride=1, padding=1, count_include_pad=False)
    shifted = target + content_loss(smooth, target).item()
    assert frequency_loss(target, target).item() == 0
    assert content_loss(shifted, target).item() == pytest.approx(content_loss(smooth, target).item(), rel=1e-4)
    assert frequency_loss(smooth, target) > 3 * frequency_loss(shifted, target)


def test_perceptual_loss_refuses_without_weights_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: no ImageNet weights here
    with pytest.raises(PretrainedWeightsMissing, match="ImageNet weights not found"):
        PerceptualLoss()
    with pytest.raises(PretrainedWeightsMissing):
        PerceptualLoss(weights_path=str(tmp_path / "nope.pth"), allow_random_weights=True)
    loss = PerceptualLoss(allow_random_weights=True)
    assert loss.pretrained is False


def test_perceptual_loss_uses_given_weights_and_relu3_3(tmp_path, monkeypatch):
    from torchvision.models import vgg19

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    ref = vgg19(weights=None)
    path = tmp_path / "vgg19.pth"
    torch.save(ref.state_dict(), path)
    loss = PerceptualLoss(weights_path=str(path))
    assert loss.pretrained
    assert isinstance(loss.features[-1], torch.nn.ReLU) and loss.features[-2].out_channels == 256
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == 0.0
    value = loss(x.requires_grad_(True), y)
    value.backward()
    assert value.item() > 0 and x.grad.abs().sum() > 0
    # ImageNet normalisation of [-1, 1] inputs: mid-grey 0 maps to (0.5 - mean) / std
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(loss._normalise(torch.zeros(1, 3, 1, 1)), (0.5 - mean) / std)
    assert all(not p.requires_grad for p in loss.parameters())
