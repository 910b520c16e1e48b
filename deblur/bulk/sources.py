"""What to deblur: the images under a folder, an s3:// prefix, or inside an uncompressed .tar archive.

Each input is a small dict {"rel": relative path, "uri": where to read it, "offset"/"size" for tar
members}; workers read the bytes themselves (ranged reads for tar members, local or on S3), so the
driver only ever holds the listing.
"""
from __future__ import annotations

import posixpath
import tarfile
from typing import Any

from .. import storage
from .imagefile import IMAGE_SUFFIXES


def _is_tar(uri: str) -> bool:
    return uri.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def check_input(uri: str) -> None:
    """Fail early (before Ray starts) on an input that cannot be listed."""
    fs, path = storage.filesystem(str(uri).rstrip("/"))
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no such folder, prefix or archive")
    if _is_tar(uri) and not str(uri).lower().endswith(".tar"):
        raise ValueError(f"{uri}: compressed archives cannot be read in parallel; decompress to a plain .tar first")
    if not _is_tar(uri) and not fs.isdir(path):
        raise ValueError(f"{uri}: expected a folder, an s3:// prefix or a .tar archive")


def list_inputs(uri: str) -> list[dict[str, Any]]:
    uri = str(uri).rstrip("/")
    check_input(uri)
    if _is_tar(uri):
        return _tar_members(uri)
    fs, path = storage.filesystem(uri)
    items = []
    for found in sorted(fs.find(path)):
        rel = posixpath.relpath(found, path)
        if rel.lower().endswith(IMAGE_SUFFIXES) and not posixpath.basename(rel).startswith("."):
            items.append({"rel": rel, "uri": storage.join(uri, rel), "offset": -1, "size": -1})
    return items


def _tar_members(uri: str) -> list[dict[str, Any]]:
    fs, path = storage.filesystem(uri)
    items = []
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:  # headers only: seeks past data
        for m in tar:
            if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES):
                items.append({"rel": m.name.lstrip("./"), "uri": uri, "offset": m.offset_data, "size": m.size})
    return items


def read_input(item: dict[str, Any]) -> bytes:
    if item["offset"] < 0:
        return storage.read_bytes(item["uri"])
    fs, path = storage.filesystem(item["uri"])
    with fs.open(path, "rb") as f:
        f.seek(item["offset"])
        return f.read(item["size"])
