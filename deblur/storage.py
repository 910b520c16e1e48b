"""URIs → filesystems, in one place: local paths and `s3://` (through s3fs, or pyarrow for Ray Data).

The S3 endpoint comes from `AWS_ENDPOINT_URL` (or `set_s3_endpoint`, e.g. from a `--s3-endpoint` flag),
credentials from the usual AWS chain (env vars, profile, instance role). Nothing here ever logs a secret.
Writes are atomic: local files are written under a temporary name and renamed; an S3 object only
becomes visible when its upload completes, so a crash never leaves half a file under the final name.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from typing import Any

import fsspec

_ENDPOINT: str | None = None


class StorageError(OSError):
    """A storage URI that cannot be used; the message names it and says why, without credentials."""


def cache_dir() -> str:
    """This machine's cache for things made once and reused (`DEBLUR_CACHE`, else ~/.cache/deblur):
    checkpoints exported to ONNX on the fly, generated training images."""
    return os.environ.get("DEBLUR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "deblur")


def set_s3_endpoint(url: str | None) -> None:
    """Override the S3 endpoint for this process (and for Ray workers started after it, via the env)."""
    global _ENDPOINT
    _ENDPOINT = url or None
    if url:
        os.environ["AWS_ENDPOINT_URL"] = url


def s3_endpoint() -> str | None:
    return _ENDPOINT or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or None


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def _scheme(uri: str) -> str:
    return str(uri).split("://", 1)[0] if "://" in str(uri) else "file"


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path within it) for a local path, file:// or s3:// URI."""
    uri = str(uri)
    scheme = _scheme(uri)
    if scheme == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    if scheme in ("s3", "s3a"):
        import s3fs

        # Fail within seconds on an unreachable endpoint instead of retrying for minutes.
        kwargs: dict[str, Any] = {"config_kwargs": {"connect_timeout": 5, "retries": {"max_attempts": 3}}}
        if s3_endpoint():
            kwargs["client_kwargs"] = {"endpoint_url": s3_endpoint()}
        fs = s3fs.S3FileSystem(**kwargs)
        return fs, uri.split("://", 1)[1].rstrip("/")
    raise StorageError(f"{uri}: unsupported storage scheme {scheme!r} (use a local path or s3://)")


def pyarrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for Ray Data readers, with the same endpoint and credential rules."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), filesystem(uri)[1]
    if _scheme(uri) in ("s3", "s3a"):
        kwargs: dict[str, Any] = {}
        endpoint = s3_endpoint()
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri.split("://", 1)[1].rstrip("/")
    raise StorageError(f"{uri}: unsupported storage scheme for pyarrow")


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def _wrap(uri: str, action: str, e: Exception) -> StorageError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return StorageError(f"{uri}: cannot {action} ({type(e).__name__}: {reason[:300]})")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.exists(path)
    except Exception as e:  # network errors from s3fs come in many types
        raise _wrap(uri, "check existence", e) from None


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{uri}: not found") from None
    except IsADirectoryError:
        raise StorageError(f"{uri}: is a directory, expected a file") from None
    except Exception as e:
        raise _wrap(uri, "read", e) from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically (see the module docstring)."""
    fs, path = filesystem(uri)
    try:
        if is_remote(uri):
            fs.pipe_file(path, data)
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except StorageError:
        raise
    except Exception as e:
        raise _wrap(uri, "write", e) from None


TMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{8}$")


def remove_partial_writes(uri: str) -> int:
    """Delete what `write_bytes` leaves when its process is killed mid-write (`<name>.tmp-<8 hex>`) under a
    local folder; returns how many. S3 has none: an object appears only when its upload completes."""
    if is_remote(uri):
        return 0
    _, path = filesystem(uri)
    removed = 0
    for folder, _, files in os.walk(path):
        for name in files:
            if TMP_SUFFIX.search(name):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def remove(uri: str) -> None:
    """Delete a file or a whole folder (nothing when it is not there)."""
    fs, path = filesystem(uri)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as e:
        raise _wrap(uri, "remove", e) from None


def _names(uri: str, kind: str) -> list[str]:
    """Sorted names of the entries of `kind` ("file" or "directory") directly under `uri` ([] when it does not exist)."""
    fs, path = filesystem(uri)
    try:
        if not fs.exists(path):
            return []
        entries = fs.ls(path, detail=True)
    except Exception as e:
        raise _wrap(uri, "list", e) from None
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == kind)


def subfolders(uri: str) -> list[str]:
    """Sorted names of the folders directly under `uri` ([] when it does not exist)."""
    return _names(uri, "directory")


def listdir(uri: str, suffix: str = "") -> list[str]:
    """Sorted URIs of the files directly under `uri` ending in `suffix` ([] when it does not exist)."""
    names = _names(uri, "file")
    return [join(uri, n) for n in names if n.endswith(suffix)]
