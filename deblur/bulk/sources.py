"""What to deblur: the images and videos under a folder, an s3:// prefix, or inside an uncompressed .tar archive.

Each input is a small dict {"rel": relative path, "uri": where to read it, "offset"/"size" for tar
members}; workers read the bytes themselves (one ranged read of exactly a member's bytes, local or on S3),
so the driver only ever holds the listing. A tar archive is listed by reading its member headers alone (one
2 KiB read at each, seeking past the data: never the archive itself, where s3fs's default 50 MiB read-ahead
would fetch it whole), and that index of member offsets is kept in this machine's cache (`storage.cache_dir`),
keyed by the archive's place, size and ETag or mtime, so a resumed run does not read the headers again.

Every name becomes a relative path that stays inside the output (`safe_relative`): a tar member, S3 key
or file whose name is absolute or climbs out with `..`, and tar links and devices, are rejected with a
reason (the job lists them in `_errors.jsonl`) and never read or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from typing import Any

from .. import storage
from ..images import ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES

SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES
INDEX_VERSION = 1  # of the cached tar index: raise it when what a listing keeps or rejects changes


def _is_tar(uri: str) -> bool:
    return uri.lower().endswith(ARCHIVE_SUFFIXES)


def check_input(uri: str) -> None:
    """Fail early (before Ray starts) on an input that cannot be listed."""
    fs, path = storage.filesystem(str(uri).rstrip("/"))
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no such folder, prefix or archive")
    if _is_tar(uri) and not str(uri).lower().endswith(".tar"):
        raise ValueError(f"{uri}: compressed archives cannot be read in parallel; decompress to a plain .tar first")
    if not _is_tar(uri) and not fs.isdir(path):
        raise ValueError(f"{uri}: expected a folder, an s3:// prefix or a .tar archive")


class UnsafeName(ValueError):
    pass


def safe_relative(name: str) -> str:
    """`name` as a normalised relative path inside the archive root, or UnsafeName saying why not."""
    if not name or "\x00" in name:
        raise UnsafeName("empty name or a NUL byte in it")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeName("an absolute path")
    rel = posixpath.normpath(name)
    if rel == "." or rel == ".." or rel.startswith("../"):
        raise UnsafeName("a path that leaves the archive root")
    return rel


def list_inputs(uri: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(images and videos to deblur, rejected entries as {"path", "reason"}) under a folder, prefix or .tar."""
    uri = str(uri).rstrip("/")
    check_input(uri)
    if _is_tar(uri):
        return _tar_members(uri)
    fs, path = storage.filesystem(uri)
    items, rejected = [], []
    for found in sorted(fs.find(path)):
        name = found[len(path) :].lstrip("/")  # the key as stored: relpath() would resolve a `..` in it
        if not name.lower().endswith(SUFFIXES) or posixpath.basename(name).startswith("."):
            continue
        try:
            rel = safe_relative(name)
        except UnsafeName as e:
            rejected.append({"path": name, "reason": f"not deblurred: {e}"})
            continue
        items.append({"rel": rel, "uri": storage.join(uri, name), "offset": -1, "size": -1})  # read as stored
    return items, rejected


def _tar_members(uri: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The archive's members, from this machine's index of it where the archive is unchanged, else from its
    headers (then indexed)."""
    fs, path = storage.filesystem(uri)
    info = fs.info(path)
    changed = info.get("ETag") or info.get("mtime") or info.get("LastModified")
    version = f"{INDEX_VERSION}\n{fs.protocol}\n{path}\n{info.get('size')}\n{changed}"  # path: absolute
    index = os.path.join(storage.cache_dir(), "tar-index", hashlib.sha256(version.encode()).hexdigest() + ".json")
    try:
        with open(index) as f:
            listed = json.load(f)
        return listed["items"], listed["rejected"]
    except (OSError, ValueError, KeyError):
        pass
    items, rejected = _read_tar_headers(fs, path, uri)
    try:
        storage.write_text(index, json.dumps({"items": items, "rejected": rejected}))
    except OSError:  # a read-only cache: the next run reads the headers again
        pass
    return items, rejected


def _read_tar_headers(fs, path: str, uri: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    items, rejected = [], []
    # tarfile reads one byte before each header (to find the archive's end), the 512-byte header, and a long
    # name's extra blocks, then seeks past the member's data: a 2 KiB read-ahead gets all of that in one request
    # and never the data (s3fs's default would fetch 50 MiB from each header on)
    with fs.open(path, "rb", block_size=2048, cache_type="readahead") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for m in tar:
            if m.isdir() or not m.name.lower().endswith(SUFFIXES):
                continue
            try:
                if not m.isfile():
                    raise UnsafeName("a link or device, not a regular file")
                rel = safe_relative(m.name)
            except UnsafeName as e:
                rejected.append({"path": m.name, "reason": f"not deblurred: {e}"})
                continue
            items.append({"rel": rel, "uri": uri, "offset": m.offset_data, "size": m.size})
    return items, rejected


def read_input(item: dict[str, Any]) -> bytes:
    """An input's bytes: a file or object whole, a tar member as one ranged read of exactly its bytes."""
    if item["offset"] < 0:
        return storage.read_bytes(item["uri"])
    fs, path = storage.filesystem(item["uri"])
    if not item["size"]:
        return b""
    return fs.cat_file(path, start=item["offset"], end=item["offset"] + item["size"])
