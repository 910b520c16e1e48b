"""Shared fixtures. Real parts only: real images from ../shared/data, real Ray, a real S3 endpoint."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEBLUR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data missing: {path} (../shared/data must sit beside the repository)")
    return path


@pytest.fixture(scope="session")
def cbsd68() -> list[Path]:
    return sorted(shared("sharp", "cbsd68").glob("*.png"))


@pytest.fixture(scope="session")
def mcmaster18() -> list[Path]:
    return sorted(shared("sharp", "mcmaster18").glob("*.tif"))


@pytest.fixture(scope="session")
def real_photo(cbsd68) -> np.ndarray:
    from deblur.images import read_image

    return read_image(str(cbsd68[0]))
