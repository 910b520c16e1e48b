"""Typed experiment configs: YAML files + dotted `--set a.b=c` overrides, checked before Ray starts.

Unknown keys and bad values are errors (`ConfigError`, one line naming the key), because a typo in a
200-epoch GPU run should cost a second, not a day.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from .data.synth import BlurRecipe
from .models import CRITICS, GENERATORS
from .options import ConfigError, Strict


class PrepareSpec(Strict):
    """How to build the shards when `data.uri` holds none yet (the embedded default uses this)."""

    dataset: Literal["gopro", "realblur", "paired", "synthetic", "sample"] = "sample"
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Strict):
    uri: str = "runs/data/sample"
    prepare: PrepareSpec | None = None
    train_split: str = "train"
    val_split: str = "val"
    crop: int = Field(256, ge=16)
    batch_size: int = Field(8, ge=1, description="per worker")
    crops_per_pair: int = Field(1, ge=1, description="random windows cut from each decoded pair per epoch")
    shuffle_buffer: int = Field(32, ge=0, description="local shuffle buffer (rows) on each worker")
    cache: bool = Field(False, description="decode the train split once and keep it in the object store (small splits)")
    val_center_crop: int | None = Field(None, ge=16, description="None: full-resolution validation")
    val_max_images: int | None = Field(None, ge=1)
    test_split: str | None = Field("test", description="held-out split reported after training, if the data has it")
    blur: BlurRecipe = Field(default_factory=BlurRecipe, description="blur drawn per crop for sharp-only rows")


class ModelConfig(Strict):
    generator: str = "unet_fpn"
    generator_kwargs: dict[str, Any] = Field(default_factory=dict)
    critic: str = "patchgan"
    critic_kwargs: dict[str, Any] = Field(default_factory=dict)
    init: str | None = Field(
        None,
        description="start the generator from these weights (a shipped name such as `default`, a checkpoint, a "
        "run folder, s3://...): fine-tuning; the architecture must match. A resumed run continues from its own "
        "checkpoint instead.",
    )


class LossConfig(Strict):
    adversarial: Literal["wgan-gp", "lsgan", "vanilla"] = "wgan-gp"
    gp_weight: float = Field(10.0, ge=0)
    lambda_adv: float = Field(1e-3, ge=0)
    lambda_per: float = Field(1.0, ge=0)
    lambda_l1: float = Field(0.0, ge=0, description="weight of the pixel content loss")
    content: Literal["l1", "mse"] = "l1"
    lambda_fft: float = Field(0.0, ge=0, description="weight of the FFT (frequency) content loss")
    perceptual_layer: Literal["relu3_3", "conv3_3"] = "relu3_3"
    perceptual_distance: Literal["mse", "l1"] = "mse"
    vgg_weights_path: str | None = None
    allow_random_vgg: bool = Field(False, description="offline smoke runs only: random VGG features")


class OptimConfig(Strict):
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    schedule: Literal["step", "linear", "cosine", "constant"] = "step"
    step_epochs: int = Field(50, ge=1, description="step: multiply the rate by `gamma` every this many epochs")
    gamma: float = Field(0.5, gt=0, le=1)
    decay_start: int = Field(0, ge=0, description="linear/cosine: constant until this epoch, then down to 0 at the end")
    warmup_steps: int = Field(0, ge=0, description="rates ramp up linearly over the first this many steps")
    critic_steps: int = Field(1, ge=0, description="critic updates per generator update (0: no GAN)")
    grad_clip: float | None = Field(None, gt=0)


class TrainConfig(Strict):
    epochs: int = Field(200, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (None: the whole split)")
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    seed: int = 0
    log_images: int = Field(4, ge=0, description="validation images written to TensorBoard each epoch")
    val_every: int = Field(1, ge=1, description="validate and checkpoint every this many epochs (and at the end)")


class ScalingSpec(Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0, description="leave CPUs for Ray Data on small machines")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per CPU worker (None: ≈ its CPUs)")


class RunSpec(Strict):
    storage_path: str = "runs"
    name: str = "sample"
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=-1)


class Config(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    run: RunSpec = Field(default_factory=RunSpec)

    @model_validator(mode="after")
    def _models_exist(self) -> "Config":
        """Names and constructor arguments are checked here, so a typo fails before Ray starts, not inside
        every worker (and every retry) after start-up."""
        for what, table, name, kwargs in (
            ("generator", GENERATORS, self.model.generator, self.model.generator_kwargs),
            ("critic", CRITICS, self.model.critic, self.model.critic_kwargs),
        ):
            if name not in table:
                raise ValueError(f"model.{what}: unknown {name!r}; choose one of {sorted(table)}")
            params = inspect.signature(table[name]).parameters
            unknown = sorted(set(kwargs) - set(params))
            if unknown:
                raise ValueError(
                    f"model.{what}_kwargs: {name} takes no {', '.join(map(repr, unknown))} "
                    f"(its arguments: {', '.join(params)})"
                )
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value`, the value parsed as YAML (so 3, 1e-4, true, [1, 2] and null work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return key.strip(), raw


#: the named configs that ship inside the package (`deblur train --config gopro`)
CONFIG_DIR = Path(__file__).parent / "configs"


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """A shipped config's name ("gopro") → its file inside the package; anything else is a path. A bare name
    that is neither a shipped config nor a file is a ConfigError listing the names, so a typo says what exists."""
    text = str(name_or_path)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        if (CONFIG_DIR / f"{text}.yaml").is_file():
            return CONFIG_DIR / f"{text}.yaml"
        if not Path(text).is_file():
            raise ConfigError(f"{text}: no such config; shipped configs: {', '.join(config_names())} (or a YAML path)")
    return Path(text)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`path`: a shipped config's name or a YAML file (None: every default); `overrides`: "a.b=c" strings."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = config_path(path)
        if not p.is_file():
            moved = f" (configs ship in the package now: --config {p.stem})" if p.stem in config_names() else ""
            raise ConfigError(f"{p}: config file not found{moved}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    for item in overrides:
        _set_dotted(tree, *parse_override(item))
    return Config.parse(tree, str(path or "config"))
