import inspect
import io

import pytest
import torch

from deblur.models import (
    CRITICS,
    GENERATORS,
    CheckpointError,
    build_critic,
    build_generator,
    count_parameters,
    generator_checkpoint,
    load_generator,
)
from deblur.models.common import crop_to, pad_to_multiple

# a small instance of every registered generator (the tests below run over the whole registry)
SMALL = {
    "unet_fpn": {"base_channels": 8},
    "resnet": {"base_channels": 8, "num_blocks": 2},
    "fpn_mobilenet": {"base_channels": 16, "pyramid_channels": 32},
    "nafnet": {"base_channels": 8, "enc_blocks": [1, 1], "middle_blocks": 1, "dec_blocks": [1, 1]},
}


@pytest.mark.parametrize("package, eager", [("deblur.models", []), ("deblur.video", ["VIDEO_SUFFIXES"])])
def test_every_public_name_loads_lazily_from_the_module_that_defines_it(package, eager):
    """deblur.models and deblur.video import their submodules on first use (`deblur.lazy`): `__all__` and the
    lookup table must name the same things, and each name must be what its submodule defines (a stale entry
    would surface only at a user's import)."""
    import importlib

    index = importlib.import_module(package)
    assert sorted(index.__all__) == sorted([*index._WHERE, *eager])
    for name, module in index._WHERE.items():
        assert getattr(index, name) is getattr(importlib.import_module(f"{package}.{module}"), name)
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        index.missing


def test_every_generator_has_a_small_test_instance():
    assert set(SMALL) == set(GENERATORS)


def doing_something(g: torch.nn.Module) -> torch.nn.Module:
    """Random weights where a generator starts as the identity (zero-initialised heads and residual scales
    block gradients at step 0, and an identity passes every check about what the output depends on)."""
    for p in g.parameters():
        if p.ndim == 4 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.01)
    for m in g.modules():
        if hasattr(m, "beta") and hasattr(m, "gamma"):
            torch.nn.init.normal_(m.beta, std=0.1)
            torch.nn.init.normal_(m.gamma, std=0.1)
    return g


def small(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return doing_something(build_generator(name, **SMALL[name]))


@pytest.mark.parametrize("name", sorted(GENERATORS) + sorted(CRITICS))
def test_constructor_arguments_follow_one_convention(name):
    params = inspect.signature({**GENERATORS, **CRITICS}[name]).parameters
    assert "base_channels" in params
    assert not {"ngf", "ndf", "n_blocks", "in_channels", "out_channels"} & set(params), list(params)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_base_channels_sets_the_width(name):
    narrow = count_parameters(build_generator(name, **SMALL[name]))
    wide = count_parameters(build_generator(name, **{**SMALL[name], "base_channels": 2 * SMALL[name]["base_channels"]}))
    assert wide > narrow


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (1, 3, 97, 203), (2, 3, 128, 128), (1, 3, 5, 7)])
def test_generator_any_size_and_range(name, shape):
    g = small(name).eval()
    x = torch.rand(shape) * 2 - 1
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert y.min() >= -1 and y.max() <= 1
    assert (y - x).abs().mean() > 1e-4  # the output is computed, not the input handed back


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_padding_to_multiple_first_changes_nothing(name):
    """`multiple` is what engines pad inputs to before the model sees them (ONNX/TensorRT shapes)."""
    g = small(name).eval()
    assert type(g.multiple) is int and g.multiple >= 1
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    padded, size = pad_to_multiple(x, g.multiple)
    assert padded.shape[-2] % g.multiple == 0 and padded.shape[-1] % g.multiple == 0
    with torch.no_grad():
        assert torch.allclose(crop_to(g(padded), size), g(x), atol=1e-5)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_gradients_reach_the_input_and_every_parameter(name):
    g = small(name).train()
    x = (torch.rand(2, 3, 128, 128) * 0.5 - 0.25).requires_grad_()  # away from the clamp: the residual passes gradients
    g(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in g.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing  # DistributedDataParallel needs a gradient for every trainable parameter
    frozen = {n.split(".")[2] for n, p in g.named_parameters() if not p.requires_grad}
    assert frozen == ({"16", "17", "18"} if name == "fpn_mobilenet" else set())  # published stages never run


def _ddp_step(rank: int, name: str, init: str, out: str) -> None:
    """One training step of a generator wrapped as Ray Train wraps it (DistributedDataParallel, defaults)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(small(name).train())
    torch.manual_seed(rank)  # each worker its own batches; DDP notices a parameter left without a gradient
    for _ in range(2):  # when the next step starts
        model.zero_grad()
        model(torch.rand(1, 3, 64, 64) - 0.5).square().mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    torch.save(grads, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_trains_under_ddp_on_two_workers(name, tmp_path):
    """fpn_mobilenet's unused published stages once stopped DDP on two workers ("Expected to have finished
    reduction"); every registered generator must take a step there, its gradients averaged across workers."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_step, args=(name, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "grads")), nprocs=2)
    a, b = (torch.load(tmp_path / f"grads.{r}", weights_only=True) for r in (0, 1))
    assert torch.equal(a, b) and a.abs().sum() > 0  # all-reduced: both workers hold the same mean gradient


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_an_image_does_not_depend_on_its_batch(name):
    g = small(name).eval()
    a, b = torch.rand(1, 3, 64, 96) * 2 - 1, torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        assert (g(a) - a).abs().mean() > 1e-3  # not the identity
        assert torch.allclose(g(torch.cat([a, b]))[:1], g(a), atol=1e-5)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_own_checkpoint_round_trip(name, tmp_path):
    g = small(name).eval()
    torch.save(generator_checkpoint(g, name, SMALL[name], epoch=3), tmp_path / "checkpoint.pt")
    loaded = load_generator(str(tmp_path))  # a directory holding checkpoint.pt
    assert type(loaded) is type(g) and not loaded.training
    x = torch.rand(1, 3, 33, 65) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("bad", [(1, 1, 32, 32), (1, 4, 32, 32), (1, 3, 0, 32), (3, 32, 32)])
def test_bad_tensors_raise_value_error(name, bad):
    with pytest.raises(ValueError):
        small(name)(torch.rand(bad))


@pytest.mark.parametrize("name", ["unet_fpn", "nafnet"])
def test_zero_initialised_generators_start_as_the_identity(name):
    g = build_generator(name, **SMALL[name]).eval()
    x = torch.rand(1, 3, 64, 80) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), x)


def test_nafnet_for_inference_computes_the_same_image_with_what_onnx_runtime_runs_well():
    """The export's rewrite (LayerNorm affines and β, γ folded into convs, SimpleGate's halves as two convs,
    the normalisation spelled out): every weight random, so a fold that drops or misplaces one shows; block
    by block too, where no output clamp can hide a difference."""
    from deblur.models.nafnet import InferenceNAFBlock, LayerNorm2d, NAFBlock

    torch.manual_seed(0)
    g = build_generator("nafnet", **SMALL["nafnet"]).eval()
    for p in g.parameters():
        torch.nn.init.normal_(p, mean=0.5 if p.ndim == 1 else 0.0, std=0.2)  # LayerNorm weights around 0.5
    before = {k: v.clone() for k, v in g.state_dict().items()}
    rng = torch.random.get_rng_state()
    fast = g.for_inference()
    assert torch.equal(torch.random.get_rng_state(), rng)  # building it draws no random numbers
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())  # the original is untouched
    assert not fast.training and not any(isinstance(m, (NAFBlock, LayerNorm2d)) for m in fast.modules())
    pairs = list(
        zip(
            [m for m in g.modules() if isinstance(m, NAFBlock)],
            [m for m in fast.modules() if isinstance(m, InferenceNAFBlock)],
        )
    )
    assert len(pairs) == 5
    with torch.no_grad():
        for block, rewritten in pairs:
            assert (rewritten.norm1.eps, rewritten.norm2.eps) == (block.norm1.eps, block.norm2.eps)
            h = torch.randn(2, block.conv1.in_channels, 12, 20)
            torch.testing.assert_close(rewritten(h), block(h), rtol=1e-5, atol=1e-5)
        x = torch.rand(2, 3, 40, 56) * 2 - 1
        expected = g(x)
        assert (expected - x).abs().mean() > 0.05  # the blocks do something
        assert torch.allclose(fast(x), expected, atol=1e-5)


def test_nafnet_for_inference_keeps_device_and_dtype_and_never_divides_zero_by_zero():
    from deblur.models.nafnet import ChannelNorm

    half = build_generator("nafnet", **SMALL["nafnet"]).half().for_inference()
    assert {(p.dtype, p.device.type) for p in half.parameters()} == {(torch.float16, "cpu")}
    # a pixel whose channels are equal, where eps underflows (fp16 flushes 1e-9 to 0): 0, not 0 * inf = NaN
    flat = ChannelNorm(1e-9)(torch.full((1, 4, 2, 2), 0.3, dtype=torch.float16))
    assert torch.equal(flat, torch.zeros_like(flat))


def test_unet_fpn_has_article_widths_and_a_checkerboard_free_decoder():
    g = build_generator("unet_fpn", base_channels=64).eval()
    assert g.widths == [64, 128, 256, 512, 512, 512, 512]
    assert g.pyramid.dilated3[0].dilation == (2, 2) and g.pyramid.dilated5[0].dilation == (4, 4)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())


def test_resnet_learn_residual_adds_the_input():
    torch.manual_seed(0)
    residual = build_generator("resnet", **SMALL["resnet"], learn_residual=True).eval()
    plain = build_generator("resnet", **SMALL["resnet"], learn_residual=False).eval()
    plain.load_state_dict(residual.state_dict())  # the same layers: the flag only changes the output
    x = torch.rand(1, 3, 36, 52) * 2 - 1
    with torch.no_grad():
        out = plain(x)
        assert torch.allclose(residual(x), torch.clamp(x + out, -1, 1), atol=1e-6)
        assert (out - x).abs().mean() > 0.1  # without it, the net must produce the image itself


def test_resnet_arguments_set_width_and_depth():
    g = build_generator("resnet", base_channels=8, num_blocks=3)
    blocks = [m for m in g.modules() if type(m).__name__ == "ResnetBlock"]
    assert len(blocks) == 3 and g.model[1].out_channels == 8 and blocks[0].conv_block[1].in_channels == 32


def test_critic_patch_map_for_256():
    d = build_critic("patchgan")
    out = d(torch.rand(2, 3, 256, 256) * 2 - 1)
    # 7×7 s2 → 128, three 4×4 s2 → 16, one 4×4 s1 → 15, 1×1 → 15
    assert out.shape == (2, 1, 15, 15)
    widths = [m.out_channels for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [64, 128, 256, 512, 1024, 1]
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in d.modules())


# DeblurGAN's ResnetGenerator at KupynOrest/DeblurGAN b15a520 (models/networks.py), as built by
# define_G(3, 3, 64, 'resnet_9blocks', norm='instance', use_dropout=True): the module list is
# [ReflectionPad, Conv7, IN, ReLU] + 2×[Conv3 s2, IN, ReLU] + 9 ResnetBlocks (indices 10..18, each
# conv_block = [Pad, Conv, IN, ReLU, Dropout, Pad, Conv, IN]) + 2×[ConvT, IN, ReLU] + [Pad, Conv7, Tanh].
# InstanceNorm has affine=False, so only convs hold weights, and use_bias=True for all of them.
OFFICIAL_KEYS = (
    [
        ("model.1.weight", (64, 3, 7, 7)),
        ("model.1.bias", (64,)),
        ("model.4.weight", (128, 64, 3, 3)),
        ("model.4.bias", (128,)),
        ("model.7.weight", (256, 128, 3, 3)),
        ("model.7.bias", (256,)),
    ]
    + [
        (f"model.{i}.conv_block.{j}.{p}", (256, 256, 3, 3) if p == "weight" else (256,))
        for i in range(10, 19)
        for j in (1, 6)
        for p in ("weight", "bias")
    ]
    + [
        ("model.19.weight", (256, 128, 3, 3)),
        ("model.19.bias", (128,)),
        ("model.22.weight", (128, 64, 3, 3)),
        ("model.22.bias", (64,)),
        ("model.26.weight", (3, 64, 7, 7)),
        ("model.26.bias", (3,)),
    ]
)


def test_resnet_matches_official_layout():
    g = build_generator("resnet")
    got = [(k, tuple(v.shape)) for k, v in g.state_dict().items()]
    assert got == OFFICIAL_KEYS
    assert count_parameters(g) == 11_378_179


def test_official_style_checkpoint_loads_strict(tmp_path):
    torch.manual_seed(1)
    g = build_generator("resnet").eval()
    path = tmp_path / "latest_net_G.pth"
    torch.save(g.state_dict(), path)  # what DeblurGAN's save_network writes: a bare state dict
    loaded = load_generator(str(path))
    x = torch.rand(1, 3, 40, 52) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))
    # DataParallel-prefixed keys load too
    torch.save({f"module.{k}": v for k, v in g.state_dict().items()}, path)
    assert isinstance(load_generator(str(path)), type(g))


def test_checkpoint_saved_with_the_old_argument_names_loads(tmp_path):
    """A saved checkpoint keeps the kwargs it was written with; ngf / n_blocks / in_channels must still load."""
    cases = {
        "resnet": (
            {"ngf": 8, "n_blocks": 2, "use_dropout": True, "learn_residual": True},
            {"base_channels": 8, "num_blocks": 2},
        ),
        "unet_fpn": ({"base_channels": 8, "in_channels": 3, "stem": True}, {"base_channels": 8}),
    }
    for name, (old_kwargs, new_kwargs) in cases.items():
        torch.manual_seed(0)
        g = doing_something(build_generator(name, **new_kwargs)).eval()
        torch.save(generator_checkpoint(g, name, old_kwargs), tmp_path / f"{name}.pt")
        loaded = load_generator(str(tmp_path / f"{name}.pt"))
        x = torch.rand(1, 3, 37, 53) * 2 - 1
        with torch.no_grad():
            assert torch.equal(loaded(x), g(x)), name
    resnet = load_generator(str(tmp_path / "resnet.pt"))
    assert sum(type(m).__name__ == "ResnetBlock" for m in resnet.modules()) == 2


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("unet_fpn", {"base_channels": 8, "in_channels": 1}, "in_channels=1 is not supported"),
        ("resnet", {"ngf": 8, "base_channels": 8}, "'base_channels' twice"),
    ],
)
def test_old_argument_names_that_cannot_mean_a_model_are_refused(tmp_path, name, kwargs, message):
    state = build_generator(name, **SMALL[name]).state_dict()
    torch.save(
        {"format": "deblur", "generator_name": name, "generator_kwargs": kwargs, "generator": state},
        tmp_path / "old.pt",
    )
    with pytest.raises(CheckpointError, match=message) as e:
        load_generator(str(tmp_path / "old.pt"))
    assert "old.pt" in str(e.value) and "\n" not in str(e.value)


def test_bad_checkpoints_give_one_line_reasons(tmp_path):
    cases = {
        "missing.pth": None,
        "empty.pth": b"",
        "text.pth": b"this is not a checkpoint",
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    for name in cases:
        with pytest.raises(CheckpointError) as e:
            load_generator(str(tmp_path / name))
        assert name in str(e.value) and "\n" not in str(e.value)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="neither DeblurGAN's ResnetGenerator nor DeblurGAN-v2's FPNMobileNet"):
        load_generator(str(other))
    buf = io.BytesIO()
    torch.save(
        {
            "format": "deblur",
            "generator_name": "unet_fpn",
            "generator_kwargs": {"base_channels": 8},
            "generator": build_generator("unet_fpn", base_channels=4).state_dict(),
        },
        buf,
    )
    (tmp_path / "mismatch.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(str(tmp_path / "mismatch.pt"))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_generator(str(path))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator("nope")
    with pytest.raises(ValueError, match="bad arguments"):
        build_generator("unet_fpn", width=3)


def test_cli_prints_parameter_counts():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "deblur.models", "--size", "128"], capture_output=True, text=True, check=True
    ).stdout
    assert "11,378,179" in out and "patchgan" in out
    assert all(name in out for name in GENERATORS)
