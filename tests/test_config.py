from pathlib import Path

import pytest

from deblur.config import ConfigError, load_config

from conftest import ROOT

CONFIGS = sorted((ROOT / "deblur" / "configs").glob("*.yaml"))


def test_shipped_configs_load():
    names = {p.stem for p in CONFIGS}
    assert {"sample", "gopro", "realblur", "deblurgan"} <= names
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.train.epochs >= 1


def test_gopro_and_deblurgan_recipes():
    g = load_config(Path(CONFIGS[0]).parent / "gopro.yaml")
    assert (g.data.crop, g.data.batch_size, g.optim.lr_g, g.optim.lr_d, g.optim.betas) == (
        256,
        8,
        2e-4,
        1e-4,
        (0.5, 0.999),
    )
    assert (g.train.epochs, g.optim.schedule, g.optim.step_epochs, g.optim.gamma, g.scaling.use_gpu) == (
        200,
        "step",
        50,
        0.5,
        True,
    )
    d = load_config(Path(CONFIGS[0]).parent / "deblurgan.yaml")
    assert (d.loss.lambda_per, d.optim.critic_steps, d.optim.schedule, d.model.generator) == (
        100.0,
        5,
        "linear",
        "resnet",
    )


def test_overrides_are_typed():
    cfg = load_config(
        None, ["train.epochs=3", "optim.lr_g=1e-3", "scaling.use_gpu=true", "model.generator_kwargs={base_channels: 8}"]
    )
    assert cfg.train.epochs == 3 and cfg.optim.lr_g == 1e-3 and cfg.scaling.use_gpu is True
    assert cfg.model.generator_kwargs == {"base_channels": 8}


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epoch=3", "train.epoch: unknown key"),
        ("train.epochs=zero", "train.epochs: Input should be a valid integer"),
        ("train.epochs=0", "train.epochs: Input should be greater than or equal to 1"),
        ("loss.adversarial=hinge", "loss.adversarial"),
        ("model.generator=unet", "unknown 'unet'"),
        ("epochs", "expected key=value"),
    ],
)
def test_bad_overrides_are_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_model_init_starts_from_matching_weights_and_refuses_another_architecture():
    import torch

    from deblur.models import load_generator
    from deblur.models.checkpoint import CheckpointError
    from deblur.train.loop import initial_weights

    shake = load_config("shake")
    assert shake.model.init == "default"
    weights = initial_weights(shake)
    shipped = load_generator("default").state_dict()
    assert set(weights) == set(shipped) and all(torch.equal(weights[k], shipped[k].float()) for k in shipped)
    other = load_config("shake", ["model.generator_kwargs.base_channels=8"])
    with pytest.raises(CheckpointError, match="model.init 'default' is a NAFNetGenerator"):
        initial_weights(other)
