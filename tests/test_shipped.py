"""The model that ships in the package: present with its card, loaded by name, and better than sharpening.

These tests use the real shipped file (`deblur/models/weights/`), not a stand-in: what they assert is what a
user who installs deblur gets. The quality check runs on the sample's held-out test photos (scikit-image's
coffee and rocket, which no training saw), blurred the way the model card's numbers are measured.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deblur import metrics
from deblur.data import layouts, shards
from deblur.data.synth import apply_kernel, linear_kernel
from deblur.evaluation.baselines import unsharp
from deblur.images import decode_image, encode_png, read_image
from deblur.models import build_generator, load_generator, shipped
from deblur.models.checkpoint import generator_checkpoint

from conftest import ROOT, job_env


def test_the_default_and_its_network_ship_with_their_cards():
    from deblur.kernel.route import route_recipe

    recipe = route_recipe(shipped.DEFAULT)  # the default is a route over the shipped network...
    assert recipe is not None and recipe.network == shipped.NETWORK
    card = shipped.model_card("default").read_text()
    assert card.startswith(f"# Model card: {shipped.DEFAULT} (the shipped default")
    assert "PSNR" in card and shipped.NETWORK in card
    assert shipped.NETWORK in shipped.shipped_models()  # ...and "default" as a checkpoint is that network
    path = Path(shipped.shipped_path("default"))
    assert path == Path(shipped.shipped_path(shipped.NETWORK))
    assert path.stat().st_size < 8 * 2**20  # fp16 generator only: no critic or optimiser state
    card = shipped.model_card(shipped.NETWORK).read_text()
    assert "PSNR" in card and "deblur/configs/shipped.yaml" in card
    obj = torch.load(path, weights_only=True)
    assert obj["name"] == shipped.NETWORK and "critic" not in obj and "optim" not in obj
    assert all(v.dtype == torch.float16 for v in obj["generator"].values() if v.is_floating_point())


def test_a_shipped_name_is_never_looked_up_on_disk(tmp_path, monkeypatch):
    (tmp_path / "default").mkdir()  # a user's folder called "default" is not the shipped model...
    monkeypatch.chdir(tmp_path)
    assert shipped.shipped_path("default") == shipped.shipped_path(shipped.NETWORK)
    assert shipped.shipped_path("./default") is None  # ...and "./default" names the folder
    assert shipped.shipped_path("no-such-model") is None


def held_out_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rows = [shards.encode_pair(p) for p in layouts.sample_test_pairs()]
    return [(decode_image(r["blur"]), decode_image(r["sharp"])) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["default", shipped.NETWORK])
def test_default_and_its_network_deblur_held_out_photos_and_beat_unsharp_masking(model):
    """The default (the route) and the network alone, each: neither may leave a held-out pair below its input."""
    from deblur.inference import load_engine

    engine = load_engine(model, "torch")
    gains, over_unsharp = [], []
    for blur, sharp in held_out_pairs():
        out = engine.deblur_image(blur)
        assert out.shape == blur.shape and out.dtype == np.uint8
        base = metrics.psnr(blur, sharp)
        gains.append(metrics.psnr(out, sharp) - base)
        over_unsharp.append(metrics.psnr(out, sharp) - metrics.psnr(unsharp(blur), sharp))
    assert len(gains) == 8
    # the floors sit below what the models' cards measure here (the network +1.16 dB, the route +1.69) and far
    # above an identity or a sharpening filter, which score ~0 and -0.1 dB
    assert np.mean(gains) > 1.0, gains
    assert np.mean(over_unsharp) > 1.0, over_unsharp
    assert min(gains) > 0, gains


def test_packaging_keeps_the_generator_only_in_half_precision(tmp_path):
    torch.manual_seed(0)
    g = build_generator("nafnet", base_channels=8, enc_blocks=[1, 1], middle_blocks=1, dec_blocks=[1, 1])
    for p in g.parameters():  # NAFNet starts as the identity; give it weights that do something
        torch.nn.init.normal_(p, std=0.05)
    ckpt = generator_checkpoint(
        g,
        "nafnet",
        dict(base_channels=8, enc_blocks=[1, 1], middle_blocks=1, dec_blocks=[1, 1]),
        critic={"w": torch.zeros(3)},
        optim={},
        epoch=4,
        step=99,
        metrics={"val_psnr": 30.0},
    )
    src = tmp_path / "checkpoint.pt"
    torch.save(ckpt, src)
    path = shipped.package(str(src), "tiny-test", folder=tmp_path / "weights")
    obj = torch.load(path, weights_only=True)
    assert "critic" not in obj and obj["step"] == 99 and obj["metrics"]["val_psnr"] == 30.0
    loaded = load_generator(str(path))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        diff = (loaded.eval()(x) - g.eval()(x)).abs().max().item()
    assert 0 < diff < 2 / 255  # fp16 rounding: below one 8-bit level of the [-1, 1] output


@pytest.mark.slow
def test_the_archive_job_uses_the_default_when_no_model_is_named(ray_cluster, tmp_path):
    from deblur.inference import load_engine

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    blurred = apply_kernel(read_image(str(layouts.sample_photo("coffee"))), linear_kernel(15, 30))
    (src / "coffee.png").write_bytes(encode_png(blurred))  # a blurred photo: the model has work to do
    res = subprocess.run(
        [
            sys.executable,
            "jobs/bulk.py",
            "--input",
            str(src),
            "--output",
            str(out),
            "--engine",
            "torch",
            "--workers",
            "1",
            "--no-progress",
        ],
        cwd=ROOT,
        env=job_env(ray_cluster),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    given = read_image(str(src / "coffee.png"))
    got = read_image(str(out / "coffee.png"))
    # PNG is lossless: the model's output, up to a rounding step where the actor's thread count (1) and this
    # process's sum the convolutions in another order
    diff = np.abs(got.astype(np.int16) - load_engine("default", "torch").deblur_image(given))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.abs(got.astype(np.int16) - given).mean() > 1.0  # and not the input passed through
