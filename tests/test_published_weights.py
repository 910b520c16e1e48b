"""The published DeblurGAN and DeblurGAN-v2 generator files load as they are and compute what the authors' code does.

The files themselves cannot be downloaded here, so each test writes a file laid out the way the real one is
(keys, legacy buffers, prefixes, wrapper dict; documented below and in tests/data), with random weights, and
checks the output of `load_generator` against an independent functional implementation of the authors'
forward pass, written from their code with plain torch functions, not from this project's modules.
"""

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deblur.models import CheckpointError, load_generator

DATA = Path(__file__).parent / "data"


# ----- DeblurGAN (KupynOrest/DeblurGAN b15a520), latest_net_G.pth, saved by PyTorch 0.3 -----

# Conv weights: [ReflectionPad, Conv7, IN, ReLU] + 2×[Conv3 s2, IN, ReLU] + 9 ResnetBlocks at indices 10..18
# (conv_block = [Pad, Conv, IN, ReLU, Dropout, Pad, Conv, IN]) + 2×[ConvT, IN, ReLU] + [Pad, Conv7, Tanh].
CONVS = {
    "model.1": (64, 3, 7, 7),
    "model.4": (128, 64, 3, 3),
    "model.7": (256, 128, 3, 3),
    **{f"model.{i}.conv_block.{j}": (256, 256, 3, 3) for i in range(10, 19) for j in (1, 6)},
    "model.19": (256, 128, 3, 3),
    "model.22": (128, 64, 3, 3),
    "model.26": (3, 64, 7, 7),
}
# PyTorch <= 0.3 gave every InstanceNorm running_mean/running_var buffers (no num_batches_tracked yet): the
# "Unexpected running stats buffer(s) model.2.running_mean ..." that users of newer PyTorch report.
INSTANCE_NORMS = {
    "model.2": 64,
    "model.5": 128,
    "model.8": 256,
    "model.20": 128,
    "model.23": 64,
    **{f"model.{i}.conv_block.{j}": 256 for i in range(10, 19) for j in (2, 7)},
}


def deblurgan_file_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in CONVS.items():
        state[f"{name}.weight"] = torch.randn(shape, generator=g) * 0.05
        out_channels = shape[1] if name in ("model.19", "model.22") else shape[0]  # ConvTranspose: (in, out, k, k)
        state[f"{name}.bias"] = torch.randn(out_channels, generator=g) * 0.05
    for name, ch in INSTANCE_NORMS.items():
        state[f"{name}.running_mean"] = torch.randn(ch, generator=g)  # never used by the forward pass
        state[f"{name}.running_var"] = torch.rand(ch, generator=g) + 0.5
    return state


def deblurgan_reference(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DeblurGAN's ResnetGenerator forward with learn_residual, dropout off, instance statistics."""
    inorm = lambda h: F.instance_norm(h, eps=1e-5)  # noqa: E731
    conv = lambda h, n, **kw: F.conv2d(h, s[f"{n}.weight"], s[f"{n}.bias"], **kw)  # noqa: E731
    h = F.relu(inorm(conv(F.pad(x, (3,) * 4, mode="reflect"), "model.1")))
    h = F.relu(inorm(conv(h, "model.4", stride=2, padding=1)))
    h = F.relu(inorm(conv(h, "model.7", stride=2, padding=1)))
    for i in range(10, 19):
        r = F.relu(inorm(conv(F.pad(h, (1,) * 4, mode="reflect"), f"model.{i}.conv_block.1")))
        h = h + inorm(conv(F.pad(r, (1,) * 4, mode="reflect"), f"model.{i}.conv_block.6"))
    for n in ("model.19", "model.22"):
        h = F.relu(
            inorm(F.conv_transpose2d(h, s[f"{n}.weight"], s[f"{n}.bias"], stride=2, padding=1, output_padding=1))
        )
    h = torch.tanh(conv(F.pad(h, (3,) * 4, mode="reflect"), "model.26"))
    return torch.clamp(x + h, -1, 1)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_deblurgan_latest_net_g_loads_and_matches_the_authors_forward(tmp_path, prefix):
    state = deblurgan_file_state()
    path = tmp_path / "latest_net_G.pth"
    torch.save({prefix + k: v for k, v in state.items()}, path)
    model = load_generator(str(path))
    x = torch.rand(2, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x), deblurgan_reference(state, x), atol=1e-5)


def test_deblurgan_loader_stays_strict_about_everything_else(tmp_path):
    state = deblurgan_file_state()
    for broken, why in (
        ({**state, "model.99.weight": torch.zeros(1)}, "unexpected"),
        ({k: v for k, v in state.items() if k != "model.26.bias"}, "missing"),
        ({**state, "model.1.running_mean": torch.zeros(64)}, "unexpected"),
    ):  # a conv has no stats
        torch.save(broken, tmp_path / "g.pth")
        with pytest.raises(CheckpointError, match=f"1 {why}" if why == "unexpected" else "1 keys missing"):
            load_generator(str(tmp_path / "g.pth"))


# ----- DeblurGAN-v2 (VITA-Group/DeblurGANv2 c16bd9f), fpn_mobilenet.h5 -----

ENCODER = ((0, 2), (2, 4), (4, 7), (7, 11), (11, 16))  # fpn.enc{j} = nn.Sequential(*features[a:b])


def fpn_mobilenet_keys() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (DATA / "deblurganv2_fpn_mobilenet_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def _alias(key: str) -> str:
    """module.fpn.enc{j}.{k}.rest → module.fpn.features.{a_j + k}.rest: the real file shares those tensors."""
    parts = key.split(".")
    if parts[1] == "fpn" and parts[2].startswith("enc"):
        j, k = int(parts[2][3:]), int(parts[3])
        return ".".join(["module", "fpn", "features", str(ENCODER[j][0] + k)] + parts[4:])
    return key


def fpn_mobilenet_file_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape, dtype in fpn_mobilenet_keys():
        if _alias(key) in state:
            state[key] = state[_alias(key)]
        elif dtype == "int64":
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5  # stored statistics: the predictor never uses them
        elif key.endswith(("running_mean", ".bias")) or (key.endswith(".weight") and len(shape) == 1):
            state[key] = torch.randn(shape, generator=g) * 0.1 + (1.0 if key.endswith(".weight") else 0.0)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return state


def fpn_mobilenet_reference(s: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """The authors' predict.py on ONE image (1×3×H×W in [-1, 1]): zero padding to (H//32 + 1)·32, the model in
    train mode (BatchNorm with the batch's statistics, InstanceNorm with the instance's), crop back."""
    p = lambda name: s[f"module.{name}"]  # noqa: E731
    h0, w0 = image.shape[-2:]
    x = F.pad(image, (0, (w0 // 32 + 1) * 32 - w0, 0, (h0 // 32 + 1) * 32 - h0))

    def bn(h, n):
        return F.batch_norm(h, None, None, p(f"{n}.weight"), p(f"{n}.bias"), training=True, eps=1e-5)

    def stage(h, i):
        f = f"fpn.features.{i}"
        if i == 0:
            return F.relu6(bn(F.conv2d(h, p(f"{f}.0.weight"), stride=2, padding=1), f"{f}.1"))
        expand, cin = f"module.{f}.conv.6.weight" in s, h.shape[1]
        w_dw = p(f"{f}.conv.3.weight") if expand else p(f"{f}.conv.0.weight")
        stride = 2 if i in (2, 4, 7, 14) else 1
        r = h
        if expand:
            r = F.relu6(bn(F.conv2d(r, p(f"{f}.conv.0.weight")), f"{f}.conv.1"))
            r = F.relu6(bn(F.conv2d(r, w_dw, stride=stride, padding=1, groups=w_dw.shape[0]), f"{f}.conv.4"))
            r = bn(F.conv2d(r, p(f"{f}.conv.6.weight")), f"{f}.conv.7")
        else:
            r = F.relu6(bn(F.conv2d(r, w_dw, stride=stride, padding=1, groups=w_dw.shape[0]), f"{f}.conv.1"))
            r = bn(F.conv2d(r, p(f"{f}.conv.3.weight")), f"{f}.conv.4")
        return h + r if stride == 1 and cin == r.shape[1] else r

    def conv_in_relu(h, n):
        return F.relu(F.instance_norm(F.conv2d(h, p(f"{n}.0.weight"), p(f"{n}.0.bias"), padding=1), eps=1e-5))

    up = lambda h, k: F.interpolate(h, scale_factor=k, mode="nearest")  # noqa: E731
    enc, h = [], x
    for a, b in ENCODER:
        for i in range(a, b):
            h = stage(h, i)
        enc.append(h)
    lat = [F.conv2d(enc[k], p(f"fpn.lateral{k}.weight")) for k in range(5)]
    map4 = lat[4]
    map3 = conv_in_relu(lat[3] + up(map4, 2), "fpn.td1")
    map2 = conv_in_relu(lat[2] + up(map3, 2), "fpn.td2")
    map1 = conv_in_relu(lat[1] + up(map2, 2), "fpn.td3")

    def head(h, k):
        h = F.relu(F.conv2d(h, p(f"head{k}.block0.weight"), padding=1))
        return F.relu(F.conv2d(h, p(f"head{k}.block1.weight"), padding=1))

    cat = torch.cat([up(head(map4, 4), 8), up(head(map3, 3), 4), up(head(map2, 2), 2), head(map1, 1)], dim=1)
    sm = up(conv_in_relu(cat, "smooth"), 2)
    sm = up(conv_in_relu(sm + lat[0], "smooth2"), 2)
    out = torch.clamp(torch.tanh(F.conv2d(sm, p("final.weight"), p("final.bias"), padding=1)) + x, -1, 1)
    return out[..., :h0, :w0]


def test_fpn_mobilenet_file_layout_is_the_documented_one():
    rows = fpn_mobilenet_keys()
    assert len(rows) == 622 and all(k.startswith("module.") for k, _, _ in rows)
    assert sum(k.endswith("num_batches_tracked") for k, _, _ in rows) == 102
    # the generator registered under fpn_mobilenet has exactly these keys (prefix off) and shapes
    from deblur.models import build_generator

    mine = {k: tuple(v.shape) for k, v in build_generator("fpn_mobilenet").state_dict().items()}
    assert mine == {k[len("module.") :]: shape for k, shape, _ in rows}


def test_fpn_mobilenet_h5_loads_strictly_and_reproduces_the_official_predictor(tmp_path):
    state = fpn_mobilenet_file_state()
    path = tmp_path / "fpn_mobilenet.h5"
    torch.save({"model": state}, path)
    model = load_generator(str(path))
    torch.manual_seed(0)
    a, b = torch.rand(1, 3, 70, 97) * 2 - 1, torch.rand(1, 3, 70, 97) * 2 - 1
    with torch.no_grad():
        ref_a, ref_b = fpn_mobilenet_reference(state, a), fpn_mobilenet_reference(state, b)
        assert ref_a.shape == a.shape and (ref_a - a).abs().mean() > 0.01  # the reference really changes the image
        assert torch.allclose(model(a), ref_a, atol=1e-4)
        both = model(torch.cat([a, b]))  # an image's output does not depend on its batch neighbours
        assert torch.allclose(both[0:1], ref_a, atol=1e-4) and torch.allclose(both[1:2], ref_b, atol=1e-4)
        model.train()  # the norms use image statistics in both modes, as the authors' train(True) predictor
        assert torch.allclose(model(a), ref_a, atol=1e-4)


def test_fpn_mobilenet_wrong_file_is_named(tmp_path):
    state = fpn_mobilenet_file_state()
    del state["module.final.bias"]
    torch.save({"model": state}, tmp_path / "fpn_mobilenet.h5")
    with pytest.raises(CheckpointError, match="fpn_mobilenet.h5.*FPNMobileNet.*1 keys missing"):
        load_generator(str(tmp_path / "fpn_mobilenet.h5"))
    torch.save({"model": {"module.fpn.inception.conv2d_1a.conv.weight": torch.zeros(1)}}, tmp_path / "fpn_inception.h5")
    with pytest.raises(CheckpointError, match="fpn_inception is not supported"):
        load_generator(str(tmp_path / "fpn_inception.h5"))
