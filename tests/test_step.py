"""The GAN step's learning-rate schedule: a pure function of where the run is (no Ray)."""
import pytest
import torch

from deblur.config import load_config
from deblur.models import build_critic, build_generator
from deblur.train.step import GANStep


def gan_step(*sets: str) -> GANStep:
    cfg = load_config(None, ["loss.lambda_per=0", "train.epochs=4", "optim.lr_g=0.001", "optim.lr_d=0.0001", *sets])
    g = build_generator("unet_fpn", base_channels=4)
    return GANStep(cfg, g, build_critic("patchgan", base_channels=4), torch.device("cpu"))


def test_cosine_and_linear_decay_move_every_step_and_end_at_zero():
    cosine, linear = gan_step("optim.schedule=cosine"), gan_step("optim.schedule=linear")
    assert [cosine.lr_factor(p) for p in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert linear.lr_factor(1.5) == pytest.approx(1 - 1.5 / 4)  # a fraction of an epoch counts
    values = [cosine.lr_factor(p / 10) for p in range(41)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_decay_start_warm_up_and_step_schedule():
    late = gan_step("optim.schedule=cosine", "optim.decay_start=2")
    assert late.lr_factor(1.9) == 1.0 and late.lr_factor(3) == pytest.approx(0.5)
    warm = gan_step("optim.schedule=constant", "optim.warmup_steps=10")
    assert [warm.lr_factor(0, s) for s in (0, 4, 9, 500)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    stepped = gan_step("optim.schedule=step", "optim.step_epochs=2", "optim.gamma=0.5")
    assert [stepped.lr_factor(p) for p in (0, 1.99, 2, 3.5)] == [1.0, 1.0, 0.5, 0.5]


def test_set_progress_sets_both_rates_and_a_resumed_step_gets_the_same():
    step = gan_step("optim.schedule=cosine", "optim.warmup_steps=4")
    step.set_progress(2.0, 100)
    assert step.opt_g.param_groups[0]["lr"] == pytest.approx(0.0005)
    assert step.opt_d.param_groups[0]["lr"] == pytest.approx(0.00005)
    resumed = gan_step("optim.schedule=cosine", "optim.warmup_steps=4")
    resumed.load_state_dict(step.state_dict())
    resumed.set_progress(2.0, 100)
    assert resumed.opt_g.param_groups[0]["lr"] == step.opt_g.param_groups[0]["lr"]
    assert "sched_g" not in step.state_dict()  # nothing to restore: the rate follows from (epoch, step)
