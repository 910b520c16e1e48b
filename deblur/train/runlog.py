"""Rank 0's record of a run: `metrics.jsonl` and TensorBoard event files, kept beside the checkpoints.

They are written to a local staging folder and copied to the run folder in storage (local or S3) after
every epoch, so a user can point TensorBoard at the run and `deblur evaluate` can draw the curves. Each
epoch's TensorBoard events go to an event file of their own, uploaded once when the epoch ends: TensorBoard
reads every event file of a folder as one run, and the upload per epoch stays one epoch's scalars and images
(an S3 object cannot be appended to, so one growing file would be sent whole every epoch: hundreds of GB over
a 200-epoch GoPro run with full-size validation images).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from .. import storage

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"


class RunLog:
    def __init__(self, run_uri: str):
        self.run_uri = run_uri
        self.local = tempfile.mkdtemp(prefix="deblur-runlog-")
        self.metrics_path = os.path.join(self.local, METRICS_FILE)
        self.tb_local = os.path.join(self.local, TB_DIR)
        os.makedirs(self.tb_local)
        self.logged = 0
        previous = storage.join(run_uri, METRICS_FILE)
        if storage.exists(previous):  # resumed run: keep its history
            with open(self.metrics_path, "wb") as f:
                f.write(storage.read_bytes(previous))

    def log(self, metrics: dict[str, Any], images: list[tuple[str, np.ndarray]] = ()) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")
        step = int(metrics.get("epoch", 0))
        self.logged += 1
        # a new event file for this epoch alone (the suffix keeps two in one second apart)
        tb = SummaryWriter(self.tb_local, filename_suffix=f".{self.logged:05d}")
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "epoch" and np.isfinite(v):
                tb.add_scalar(k, v, step)
        for name, img in images:
            tb.add_image(name, img, step, dataformats="HWC")
        tb.close()
        self.sync()

    def sync(self) -> None:
        """metrics.jsonl (small) whole; each finished event file once, then dropped from the staging folder."""
        storage.write_bytes(storage.join(self.run_uri, METRICS_FILE), open(self.metrics_path, "rb").read())
        for name in sorted(os.listdir(self.tb_local)):
            path = os.path.join(self.tb_local, name)
            storage.write_bytes(storage.join(self.run_uri, TB_DIR, name), open(path, "rb").read())
            os.remove(path)

    def close(self) -> None:
        self.sync()
