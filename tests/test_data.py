import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from deblur import storage
from deblur.data import layouts, shards
from deblur.data.synth import synthesize
from deblur.images import decode_image, read_image

from conftest import write_image


@pytest.fixture(scope="module")
def paired_folder(tmp_path_factory, cbsd68):
    """The paired layout built from real photos: root/sharp/<name>, root/blur/<name> (synthetic blur)."""
    root = tmp_path_factory.mktemp("paired")
    for i, path in enumerate(cbsd68[:24]):
        sharp = read_image(str(path))
        write_image(root / "sharp" / f"{path.stem}.png", sharp)
        write_image(root / "blur" / f"{path.stem}.png", synthesize(sharp, seed=i, max_len=25).blurred)
    return root


def counting_encoder(calls: list[int]):
    """`shards.local_map` that records how many pairs each call was given to encode."""
    return lambda fn, items: (calls.append(len(items)), shards.local_map(fn, items))[1]


def snapshot(uri: str) -> dict[str, bytes]:
    fs, path = storage.filesystem(uri)
    return {p: fs.cat_file(p) for p in sorted(fs.find(path))}


def check_round_trip(out: str, root: Path, n: int) -> None:
    manifest = shards.read_manifest(out)
    assert manifest["splits"]["train"]["pairs"] == n
    assert len(manifest["shards"]) > 1  # small shard target → several shards
    seen = {}
    for entry in manifest["shards"]:
        uri = storage.join(out, entry["path"])
        import hashlib

        assert hashlib.sha256(storage.read_bytes(uri)).hexdigest() == entry["sha256"]
        for row in shards.read_rows(uri):
            seen[row["key"]] = row
    assert len(seen) == n
    for key, row in seen.items():
        for kind in ("blur", "sharp"):
            original = read_image(str(root / kind / f"{key}.png"))
            assert np.array_equal(decode_image(row[kind]), original), (key, kind)
        assert (row["height"], row["width"]) == original.shape[:2]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_prepare_round_trip_and_idempotent(where, paired_folder, tmp_path, request):
    out = str(tmp_path / "shards") if where == "local" else request.getfixturevalue("bucket") + "/paired"
    pairs = layouts.paired(str(paired_folder))
    info = shards.layout_info("paired", str(paired_folder))
    shards.prepare(pairs, out, info, shard_mb=2.0, progress=False)
    check_round_trip(out, paired_folder, 24)
    before = snapshot(out)
    calls = []
    counting = counting_encoder(calls)
    shards.prepare(pairs, out, info, shard_mb=2.0, progress=False, encoder=counting)
    assert calls == [] and snapshot(out) == before  # nothing encoded, nothing rewritten


def test_rerun_after_interruption_finishes_only_the_rest(paired_folder, tmp_path):
    out = str(tmp_path / "shards")
    pairs = layouts.paired(str(paired_folder))
    info = shards.layout_info("paired", str(paired_folder))
    manifest = shards.prepare(pairs, out, info, shard_mb=2.0, progress=False)
    lost = manifest["shards"][1]["path"]
    os.remove(os.path.join(out, lost))  # as if the run died before this shard and before the manifest
    os.remove(os.path.join(out, "manifest.json"))
    calls = []
    counting = counting_encoder(calls)
    again = shards.prepare(pairs, out, info, shard_mb=2.0, progress=False, encoder=counting)
    assert calls == [manifest["shards"][1]["rows"]]
    assert again == manifest


def test_synthetic_shards_are_remade_when_the_blur_recipe_changes(cbsd68, tmp_path, monkeypatch):
    """Shards of synthetic pairs from an older blur synthesis are re-encoded, not trained on stale."""
    from deblur.data import synth

    root = tmp_path / "photos"
    for path in cbsd68[:3]:
        write_image(root / f"{path.stem}.png", read_image(str(path)))
    out = str(tmp_path / "shards")
    pairs = layouts.synthetic(str(root), val_fraction=0.0)
    info = shards.layout_info("synthetic", str(root))
    calls = []
    counting = counting_encoder(calls)
    shards.prepare(pairs, out, info, progress=False)
    shards.prepare(pairs, out, info, progress=False, encoder=counting)
    assert calls == []  # same recipe: nothing to do
    monkeypatch.setattr(synth, "VERSION", synth.VERSION + 1)
    shards.prepare(pairs, out, info, progress=False, encoder=counting)
    assert calls == [3]  # every synthetic pair made again


def test_an_edited_file_of_the_same_size_is_re_encoded(real_photo, tmp_path):
    root = tmp_path / "pairs"
    sharp = real_photo[:64, :80]
    for kind, img in (("sharp", sharp), ("blur", cv2.GaussianBlur(sharp, (5, 5), 0))):
        (root / kind).mkdir(parents=True, exist_ok=True)
        write_image(root / kind / "a.bmp", img)  # uncompressed: an edit keeps the size
    out = str(tmp_path / "shards")
    pairs = layouts.paired(str(root))
    shards.prepare(pairs, out, {}, progress=False)
    path = root / "sharp" / "a.bmp"
    size = path.stat().st_size
    edited = sharp.copy()
    edited[10:20, 10:20] = 255 - edited[10:20, 10:20]
    write_image(path, edited)
    assert path.stat().st_size == size
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a later mtime, as an edit makes
    calls = []
    shards.prepare(layouts.paired(str(root)), out, {}, progress=False, encoder=counting_encoder(calls))
    assert calls == [1]
    row = shards.read_rows(shards.split_uris(out, "train")[0])[0]
    assert np.array_equal(decode_image(row["sharp"]), edited)


def test_truncated_or_altered_shards_fail_with_their_name(paired_folder, tmp_path):
    out = tmp_path / "shards"
    manifest = shards.prepare(layouts.paired(str(paired_folder)), str(out), {}, shard_mb=2.0, progress=False)
    first = out / manifest["shards"][0]["path"]
    data = first.read_bytes()
    first.write_bytes(data[:-100])
    with pytest.raises(shards.ShardError, match=f"{first.name}.*truncated"):
        shards.split_uris(str(out), "train")
    altered = bytearray(data)
    altered[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(altered))
    shards.split_uris(str(out), "train")  # the size is right ...
    with pytest.raises(shards.ShardError, match=f"{first.name}.*sha256"):
        shards.read_rows(str(first))  # ... the content is not
    first.unlink()
    with pytest.raises(shards.ShardError, match="missing"):
        shards.split_uris(str(out), "train")


def test_prepare_through_ray_on_s3(ray_session, paired_folder, bucket):
    from deblur.data.pipeline import ray_map_ordered

    out = f"{bucket}/ray"
    pairs = layouts.paired(str(paired_folder))
    shards.prepare(
        pairs, out, shards.layout_info("paired", None), shard_mb=2.0, progress=False, encoder=ray_map_ordered
    )
    check_round_trip(out, paired_folder, 24)


def test_prepare_job_cli(tmp_path, paired_folder):
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "jobs/prepare_data.py",
        "--dataset",
        "paired",
        "--root",
        str(paired_folder),
        "--out",
        str(tmp_path / "o"),
        "--workers",
        "0",
        "--no-progress",
        "--shard-mb",
        "2",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr
    assert "train: 24 pairs" in res.stdout
    bad = subprocess.run(
        cmd[:5] + [str(tmp_path / "nowhere")] + cmd[6:], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert (
        bad.returncode == 1 and "nowhere: dataset root does not exist" in bad.stderr and "Traceback" not in bad.stderr
    )


def make_tree(root: Path, files: dict[str, np.ndarray | bytes]) -> None:
    for rel, content in files.items():
        p = root / rel
        if isinstance(content, bytes):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)
        else:
            write_image(p, content)


def tiny(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_gopro_layout(tmp_path):
    files = {}
    for split, scenes in (("train", ["GOPR0372_07_00", "GOPR0374_11_00"]), ("test", ["GOPR0384_11_00"])):
        for scene in scenes:
            for frame in ("000047", "000048"):
                for kind in ("blur", "blur_gamma", "sharp"):
                    files[f"GOPRO_Large/{split}/{scene}/{kind}/{frame}.png"] = tiny(
                        hash((split, scene, frame, kind)) % 1000
                    )
    make_tree(tmp_path, files)
    pairs = layouts.gopro(str(tmp_path / "GOPRO_Large"))
    assert len(pairs) == 6 and {p.split for p in pairs} == {"train", "test"}
    p = next(p for p in pairs if p.key == "train/GOPR0374_11_00/000048")
    assert p.blur.endswith("GOPR0374_11_00/blur/000048.png") and p.sharp.endswith("GOPR0374_11_00/sharp/000048.png")
    gamma = layouts.gopro(str(tmp_path / "GOPRO_Large"), blur_kind="blur_gamma")
    assert all("/blur_gamma/" in p.blur for p in gamma)
    os.remove(tmp_path / "GOPRO_Large/test/GOPR0384_11_00/sharp/000048.png")
    with pytest.raises(layouts.LayoutError, match="000048.png: blur image without a sharp partner"):
        layouts.gopro(str(tmp_path / "GOPRO_Large"))


def test_realblur_layout(tmp_path):
    files = {}
    lines = {"train": [], "test": []}
    for split, scenes in (("train", ["scene001", "scene002"]), ("test", ["scene003"])):
        for scene in scenes:
            for n in (1, 2):
                files[f"RealBlur-J_ECC_IMCORR_centroid_itensity_ref/{scene}/gt/gt_{n}.png"] = tiny(n)
                files[f"RealBlur-J_ECC_IMCORR_centroid_itensity_ref/{scene}/blur/blur_{n}.png"] = tiny(n + 10)
                base = f"RealBlur-J_ECC_IMCORR_centroid_itensity_ref/{scene}"
                lines[split].append(f"{base}/gt/gt_{n}.png {base}/blur/blur_{n}.png")
    make_tree(tmp_path, files)
    for split in lines:
        (tmp_path / f"RealBlur_J_{split}_list.txt").write_text("\n".join(lines[split]) + "\n")
    pairs = layouts.realblur(str(tmp_path))
    assert len(pairs) == 6 and sum(p.split == "test" for p in pairs) == 2
    assert all(p.sharp.endswith(".png") and "/gt/" in p.sharp and "/blur/" in p.blur for p in pairs)
    (tmp_path / "RealBlur_J_test_list.txt").write_text("missing/gt.png missing/blur.png\n")
    with pytest.raises(layouts.LayoutError, match=r"RealBlur_J_test_list.txt:1: .*missing/gt.png does not exist"):
        layouts.realblur(str(tmp_path))


def test_layout_errors(tmp_path):
    with pytest.raises(layouts.LayoutError, match="does not exist"):
        layouts.paired(str(tmp_path / "none"))
    (tmp_path / "empty" / "blur").mkdir(parents=True)
    (tmp_path / "empty" / "sharp").mkdir()
    with pytest.raises(layouts.LayoutError, match="no images"):
        layouts.paired(str(tmp_path / "empty"))
    make_tree(tmp_path / "lonely", {"blur/a.png": tiny(1), "blur/b.png": tiny(2), "sharp/a.png": tiny(3)})
    with pytest.raises(layouts.LayoutError, match="b.png: blur image without a sharp partner"):
        layouts.paired(str(tmp_path / "lonely"))
    with pytest.raises(layouts.LayoutError, match="unknown dataset"):
        layouts.discover("imagenet", str(tmp_path))


def test_bad_images_stop_before_a_partial_shard_or_are_skipped(tmp_path):
    make_tree(
        tmp_path / "d",
        {
            "blur/a.png": tiny(1),
            "sharp/a.png": tiny(2),
            "blur/b.png": tiny(3),
            "sharp/b.png": b"\x89PNG\r\n\x1a\n truncated",
            "blur/c.png": tiny(4, 30, 30),
            "sharp/c.png": tiny(5),
        },
    )
    pairs = layouts.paired(str(tmp_path / "d"))
    out = tmp_path / "out"
    with pytest.raises(shards.PairError, match=r"sharp/b.png: not a decodable image"):
        shards.prepare(pairs, str(out), {}, progress=False)
    assert not list(out.rglob("*.parquet")) and not (out / "manifest.json").exists()
    manifest = shards.prepare(pairs, str(out), {}, skip_bad=True, progress=False)
    reasons = {s["key"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"b", "c"}
    assert "differs from its sharp partner" in reasons["c"] and "c.png" in reasons["c"]
    assert manifest["splits"]["train"]["pairs"] == 1


def test_sample_dataset_is_embedded_and_split(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path))  # dead leaves are made into the cache, once
    pairs = layouts.sample(dead_leaves=3, dead_leaves_size=96, eval_variants=3)
    by_split = {s: [p for p in pairs if p.split == s] for s in ("train", "val", "test")}
    assert len(pairs) == sum(map(len, by_split.values()))
    for split in ("val", "test"):  # fixed blur, several kernels per held-out photo
        assert {p.key.split("~")[0] for p in by_split[split]} == set(layouts.SAMPLE_SPLITS[split])
        assert len(by_split[split]) == 3 * len(layouts.SAMPLE_SPLITS[split]) and not any(
            p.online for p in by_split[split]
        )
    train_photos = {os.path.basename(p.sharp).split(".")[0] for p in by_split["train"]}
    assert train_photos.isdisjoint(layouts.SAMPLE_SPLITS["val"] + layouts.SAMPLE_SPLITS["test"])
    assert all(p.online and p.blur is None and os.path.isfile(p.sharp) for p in by_split["train"])
    assert sum(p.key.startswith("deadleaves") for p in by_split["train"]) == 3
    made = sorted((tmp_path / "deadleaves").iterdir())
    stamps = [p.stat().st_mtime_ns for p in made]
    assert len(made) == 3 and layouts.sample(dead_leaves=3, dead_leaves_size=96)  # a second call reuses them
    assert sorted((tmp_path / "deadleaves").iterdir()) == made and [p.stat().st_mtime_ns for p in made] == stamps
    online = shards.encode_pair(by_split["train"][0])
    assert online["blur"] is None and online["kernel"] is None
    held_out = shards.encode_pair(by_split["test"][0])
    kernel = np.asarray(held_out["kernel"])
    assert abs(kernel.sum() - 1) < 1e-4 and 9 <= max(kernel.shape) <= 23  # linear motion of 9-21 px
    assert shards.encode_pair(by_split["test"][0])["blur"] == held_out["blur"]  # seeded: the same every time


def hwc(chw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(chw, -3, -1))


def test_online_pairs_become_fresh_blurred_crops(ray_session, tmp_path, cbsd68):
    from deblur.data import synth
    from deblur.data.pipeline import train_dataset

    folder = tmp_path / "photos"
    for path in cbsd68[:4]:
        write_image(folder / f"{path.stem}.png", read_image(str(path)))
    out = str(tmp_path / "shards")
    shards.prepare(layouts.synthetic(str(folder), val_fraction=0.0, online=True), out, {}, progress=False)
    # one fixed, symmetric kernel (a defocus disk of radius 3), so each crop's blur can be recomputed here
    recipe = synth.BlurRecipe(
        kinds={"defocus": 1.0}, defocus_radius=(3, 3), noise_sigma=(0, 0), jpeg_prob=0, gamma_prob=0
    )
    disk = synth.normalise_kernel(synth.defocus_kernel(3))
    ds = train_dataset(out, crop=64, batch_size=4, crops_per_pair=2, blur=recipe)  # streamed: Ray Data cuts the crops
    epochs = [list(ds.iter_batches(batch_size=None)) for _ in range(2)]
    pairs = [(hwc(b), hwc(s)) for epoch in epochs for batch in epoch for b, s in zip(batch["blur"], batch["sharp"])]
    assert len(pairs) == 2 * 4 * 2 and pairs[0][0].shape == (64, 64, 3)
    textured = [np.ptp(sharp) > 8 for _, sharp in pairs]  # a blur of a flat patch (white sky) is the patch
    assert sum(textured) >= len(pairs) // 2
    for (blurred, sharp), has_detail in zip(pairs, textured):
        if has_detail:
            assert not np.array_equal(blurred, sharp)
        # aligned, and blurred with the scene around the crop: inside, exactly the kernel applied to the crop
        again = synth.apply_kernel(sharp, disk)
        assert np.abs(blurred[6:-6, 6:-6].astype(int) - again[6:-6, 6:-6]).max() <= 1
    first, second = (np.stack([b for b, _ in pairs[k * 8 : (k + 1) * 8]]) for k in (0, 1))
    assert not np.array_equal(first, second)  # new windows every epoch


@pytest.fixture(scope="module")
def inverted_shards(tmp_path_factory, cbsd68):
    """Pairs whose blur is the colour-inverted sharp image, plus one photo smaller than the crop."""
    root = tmp_path_factory.mktemp("inv")
    for path in cbsd68[:6]:
        sharp = read_image(str(path))
        write_image(root / "sharp" / f"{path.stem}.png", sharp)
        write_image(root / "blur" / f"{path.stem}.png", 255 - sharp)
    small = read_image(str(cbsd68[7]))[:40, :50]
    write_image(root / "sharp" / "small.png", small)
    write_image(root / "blur" / "small.png", 255 - small)
    out = root / "shards"
    shards.prepare(layouts.paired(str(root)), str(out), {}, shard_mb=1.0, progress=False)
    return str(out)


def test_stream_reads_a_task_per_shard_and_splits_few_shards_per_cpu(
    ray_session, inverted_shards, tmp_path, monkeypatch
):
    """A read task per shard, through Ray Data's first Parquet datasource (see read_split), the global switch
    left as the user set it; a split of fewer shards than CPUs is cut into about one block per CPU."""
    from deblur.data import pipeline
    from deblur.data.shards import split_uris

    def blocks(ds) -> list[int]:
        return [m.num_rows for b in ds.iter_internal_ref_bundles() for m in b.metadata]

    ctx = ray_session.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    n_shards = len(split_uris(inverted_shards, "train"))
    rows = blocks(pipeline.read_split(inverted_shards, "train"))
    assert len(rows) == n_shards > 1 and sum(rows) == 7  # the default datasource packs them into one task
    assert ctx.use_datasource_v2 == before

    one = tmp_path / "one"
    shards.prepare(layouts.paired(str(Path(inverted_shards).parent)), str(one), {}, shard_mb=100, progress=False)
    assert len(split_uris(str(one), "train")) == 1
    for cpus, most in ((1, 7), (2, 4), (1000, 2)):  # block rows: the split's 7, ceil(7 / 2), the batch size
        monkeypatch.setattr(pipeline, "_cluster_cpus", lambda cpus=cpus: cpus)
        crops = blocks(pipeline.train_dataset(str(one), crop=32, batch_size=2))
        assert sum(crops) == 7 and max(crops) == most, (cpus, crops)


def test_training_stream_keeps_crops_aligned(ray_session, inverted_shards):
    from deblur.data.pipeline import train_dataset

    ds = train_dataset(inverted_shards, crop=64, batch_size=3)
    n = 0
    for _ in range(2):  # two epochs: different random windows, always aligned
        for batch in ds.iter_batches(batch_size=4, batch_format="numpy"):
            assert batch["blur"].shape[1:] == (3, 64, 64) and batch["blur"].dtype == np.uint8  # scaled on the device
            assert np.array_equal(batch["blur"], 255 - batch["sharp"])
            n += len(batch["blur"])
    assert n == 14


def test_cached_training_stream_decodes_once_and_crops_anew_each_epoch(ray_session, inverted_shards):
    """cache=True: the decoded split sits in the object store; windows still differ per epoch."""
    from deblur.data.pipeline import CropStream, train_dataset

    ds = train_dataset(inverted_shards, crop=64, batch_size=3, cache=True, crops_per_pair=2)
    rows = list(ds.iter_rows())
    assert len(rows) == 7 and all(r["blur"].dtype == np.uint8 and r["blur"].ndim == 3 for r in rows)  # decoded, once
    stream = CropStream(rows, crop=64, batch_size=4, crops_per_pair=2, seed=0)
    epochs = []
    for epoch in range(2):
        crops = []
        for batch in stream.epoch(epoch):
            assert batch["blur"].shape == (4, 3, 64, 64) and batch["blur"].dtype == np.uint8
            assert np.array_equal(batch["blur"], 255 - batch["sharp"])  # still aligned
            crops += [c.tobytes() for c in batch["sharp"]]
        epochs.append(crops)
    assert len(epochs[0]) == len(epochs[1]) == 12  # 7 pairs × 2 crops, whole batches of 4
    assert set(epochs[0]) != set(epochs[1])  # random windows are cut after the cache, not cached
    again = [c.tobytes() for batch in stream.epoch(0) for c in batch["sharp"]]
    assert again == epochs[0]  # seeded: an epoch is the same epoch after a resume


def test_training_stream_from_s3(ray_session, inverted_shards, bucket):
    fs, _ = storage.filesystem(bucket)
    fs.put(inverted_shards, f"{bucket[5:]}/inv", recursive=True)
    from deblur.data.pipeline import train_dataset

    batches = list(train_dataset(f"{bucket}/inv", crop=32).iter_batches(batch_size=7, batch_format="numpy"))
    assert sum(len(b["blur"]) for b in batches) == 7
    assert all(np.array_equal(b["blur"], 255 - b["sharp"]) for b in batches)


def test_eval_stream_full_images_with_keys(ray_session, inverted_shards):
    from deblur.data.pipeline import eval_dataset

    rows = list(eval_dataset(inverted_shards, split="train").iter_rows())
    sizes = {r["key"]: r["sharp"].shape for r in rows}
    assert sizes["small"] == (3, 40, 50)
    assert all(s in ((3, 321, 481), (3, 481, 321), (3, 40, 50)) for s in sizes.values())
    cropped = list(eval_dataset(inverted_shards, split="train", center_crop=64).iter_rows())
    assert all(r["blur"].shape == (3, 64, 64) for r in cropped)


def test_missing_shards_uri_is_a_clear_error(tmp_path):
    with pytest.raises(storage.StorageError, match="no manifest"):
        shards.split_uris(str(tmp_path / "nothing"), "train")


def test_crop_stream_surfaces_errors_and_stops_cleanly(real_photo):
    from deblur.data.pipeline import NO_BLUR, CropStream

    rows = [
        {"key": "a", "blur": NO_BLUR, "sharp": real_photo},
        {"key": "b", "blur": NO_BLUR, "sharp": real_photo[:50, :60]},
    ]
    stream = CropStream(rows, crop=48, batch_size=2, crops_per_pair=3)
    batches = list(stream.epoch(0))
    assert len(batches) == 3 and all(b["blur"].shape == (2, 3, 48, 48) for b in batches)
    first = next(iter(stream.epoch(1)))  # abandoning an epoch half-way leaves no thread behind
    assert first["sharp"].shape == (2, 3, 48, 48)
    broken = CropStream([{"key": "c", "blur": NO_BLUR, "sharp": real_photo.astype(np.float32)}], crop=48, batch_size=1)
    with pytest.raises(ValueError, match="uint8"):  # raised in the producer thread, surfaced in the consumer
        list(broken.epoch(0))
    with pytest.raises(ValueError, match="no training pairs"):
        CropStream([], crop=48, batch_size=1)


def test_uint8_batches_scale_on_the_device_exactly_as_images_do(real_photo):
    """The stream carries uint8; the trainer's scaling of a batch is `to_tensor`'s of each image."""
    import torch

    from deblur.images import to_chw_uint8, to_model_range, to_tensor

    crops = [real_photo[:32, :48], 255 - real_photo[:32, :48]]
    batch = to_model_range(torch.from_numpy(np.stack([to_chw_uint8(c) for c in crops])))
    assert batch.dtype == torch.float32 and torch.equal(batch, torch.stack([to_tensor(c) for c in crops]))
    with pytest.raises(ValueError, match="uint8"):
        to_model_range(batch)
