"""The training loop's pure stages, without Ray: the GAN step's learning-rate schedule, one epoch of steps,
validation's numbers and the epoch line."""

import numpy as np
import pytest
import torch

from deblur import metrics
from deblur.config import load_config
from deblur.data.synth import synthesize
from deblur.images import to_model_input
from deblur.models import build_critic, build_generator
from deblur.train.loop import epoch_line, train_epoch, validate
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


@pytest.fixture(scope="module")
def val_pairs(real_photo) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three (blurred, sharp) uint8 crops of a real photo, with synthetic motion blur."""
    crops = [real_photo[i : i + 48, j : j + 64] for i, j in ((0, 0), (100, 150), (200, 300))]
    return [(synthesize(c, seed=k, max_len=9).blurred, c) for k, c in enumerate(crops)]


def rows(pairs):
    """The rows `eval_dataset` yields: float 3×H×W in [-1, 1]."""
    return ({"key": f"p{k}", "blur": to_model_input(b), "sharp": to_model_input(s)} for k, (b, s) in enumerate(pairs))


class Negate(torch.nn.Module):
    def forward(self, x):
        return -x


def test_validate_scores_an_identity_model_as_its_input(val_pairs):
    val, images = validate(rows(val_pairs), torch.nn.Identity(), torch.device("cpu"), log_images=2)
    expected_psnr = np.mean([metrics.psnr(b, s) for b, s in val_pairs])
    expected_ssim = np.mean([metrics.ssim(b, s) for b, s in val_pairs])
    assert val["val_images"] == 3
    assert val["val_psnr_input"] == pytest.approx(expected_psnr) and val["val_ssim_input"] == pytest.approx(
        expected_ssim
    )
    assert val["val_psnr"] == val["val_psnr_input"] and val["val_ssim"] == val["val_ssim_input"]
    assert val["val_psnr_gain"] == 0.0
    assert [name for name, _ in images] == ["val/p0", "val/p1"]
    blur, sharp = val_pairs[0]
    np.testing.assert_array_equal(images[0][1], np.concatenate([blur, blur, sharp], axis=1))  # input | output | sharp


def test_validate_a_bad_model_loses_to_its_input_and_a_tiny_net_scores(val_pairs):
    bad, _ = validate(rows(val_pairs), Negate(), torch.device("cpu"))
    assert bad["val_psnr_gain"] < -10 and bad["val_ssim"] < bad["val_ssim_input"]
    assert bad["val_psnr_gain"] == pytest.approx(bad["val_psnr"] - bad["val_psnr_input"])
    torch.manual_seed(0)
    tiny, images = validate(rows(val_pairs), build_generator("unet_fpn", base_channels=4), torch.device("cpu"))
    assert images == [] and tiny["val_images"] == 3
    assert all(np.isfinite(v) for v in tiny.values())
    assert tiny["val_psnr_input"] == bad["val_psnr_input"]  # the input's numbers do not depend on the model


def test_validate_an_empty_split_names_it():
    with pytest.raises(ValueError, match="s3://b/shards: validation split 'val' is empty"):
        validate(iter(()), torch.nn.Identity(), torch.device("cpu"), what="s3://b/shards: validation split 'val'")


def test_train_epoch_takes_at_most_steps_per_epoch_and_moves_the_rate():
    step = gan_step("optim.schedule=cosine", "loss.lambda_adv=0.01")
    torch.manual_seed(0)
    batches = [{"blur": torch.rand(2, 3, 64, 64) * 2 - 1, "sharp": torch.rand(2, 3, 64, 64) * 2 - 1} for _ in range(5)]
    stats = train_epoch(step, iter(batches), epoch=1, global_step=10, steps_per_epoch=3)
    assert (stats.steps, stats.images) == (3, 6)
    assert set(stats.losses) >= {"loss_g", "loss_d", "gp", "loss_l1"} and all(np.isfinite(list(stats.losses.values())))
    # the rate set before the last step: 1 + 2/3 epochs into a 4-epoch cosine decay
    assert step.opt_g.param_groups[0]["lr"] == pytest.approx(0.001 * step.lr_factor(1 + 2 / 3, 12))
    with pytest.raises(ValueError, match="no training batch"):
        train_epoch(step, iter(()), epoch=0, global_step=0)


def test_epoch_line_shows_validation_when_there_was_one():
    m = {"epoch": 2, "loss_g": 0.1234, "loss_d": 0.5, "images_per_s": 12.34, "epoch_seconds": 61.2}
    assert epoch_line(m, 6) == "epoch 3/6  loss_g 0.1234  loss_d 0.5000  12.3 img/s  61 s"
    m.update(val_psnr=25.5, val_psnr_input=24.25, val_psnr_gain=1.25, val_ssim=0.81234)
    assert epoch_line(m, 6) == (
        "epoch 3/6  loss_g 0.1234  loss_d 0.5000  val PSNR 25.50 dB (input 24.25, +1.25)  SSIM 0.8123  12.3 img/s  61 s"
    )


def test_bf16_only_where_the_gpu_computes_it_in_hardware():
    """`torch.cuda.is_bf16_supported()` says yes on a V100 or T4, where bf16 is emulated and slower than fp16:
    the choice is by compute capability, 8.0 (Ampere) and later."""
    from deblur.models.common import cuda_has_native_bf16
    from deblur.train.step import amp_dtype

    assert [cuda_has_native_bf16(c) for c in ((7, 0), (7, 5), (8, 0), (8, 6), (9, 0))] == [False] * 2 + [True] * 3
    if torch.cuda.is_available():
        expected = torch.bfloat16 if cuda_has_native_bf16() else torch.float16
        assert amp_dtype("auto", torch.device("cuda")) == expected
    else:
        assert not cuda_has_native_bf16()
    assert amp_dtype("off", torch.device("cpu")) is None and amp_dtype("fp16", torch.device("cuda")) == torch.float16
