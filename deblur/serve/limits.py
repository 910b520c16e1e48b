"""Request checks for the endpoint: what a hostile or careless client can send, and the 4xx it gets.

Kept free of Ray and FastAPI so the rules read in one place: body size, content type, the pixel budget
(checked from the image header before any decoding), and the optional bearer token (constant-time
comparison; the token is never logged or echoed).

The token itself stays where it was configured: the process that builds the app (the driver of
`deblur serve`, or the task `serve deploy` builds it in) reads it and hands the replicas only a salted SHA-256
of it (`TokenCheck`), as the replicas' constructor arguments. So the token reaches every replica on every node
(a cluster's workers do not have the driver's environment or files) and never appears in a replica's
environment, Serve's config or status, Ray's dashboard, a log or the process list. Use a long random token
(`openssl rand -hex 32`): a salted hash of a short one could be guessed by someone who can read the cluster's
internals. With `serve deploy`, give the token as a file (`DEBLUR_API_TOKEN_FILE`, a mounted secret, as
cluster/serve.yaml does): a `DEBLUR_API_TOKEN` written into the config's runtime_env would be in that config. A
new token takes effect when the app is built again (a redeploy), not when a replica restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


class AuthConfigError(ValueError):
    """A token source that was configured but gives no token: the endpoint must not start without auth."""


class RequestError(Exception):
    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class TokenCheck:
    """What a replica needs to check a bearer token without holding it: a random salt and SHA-256(salt + token)."""

    salt: str
    digest: str

    @classmethod
    def of(cls, token: str) -> "TokenCheck":
        salt = secrets.token_hex(16)
        return cls(salt, cls._hash(salt, token))

    @staticmethod
    def _hash(salt: str, token: str) -> str:
        return hashlib.sha256(f"{salt}:{token}".encode()).hexdigest()

    def matches(self, given: str) -> bool:
        return hmac.compare_digest(self._hash(self.salt, given), self.digest)

    def __repr__(self) -> str:  # nothing of it in a log line or an error
        return "TokenCheck(...)"


def configured_token(token_file: str | None = None) -> TokenCheck | None:
    """The endpoint's token from $DEBLUR_API_TOKEN, or a file (`token_file`, else $DEBLUR_API_TOKEN_FILE), as the
    `TokenCheck` the replicas get; neither set → None (auth off). A source that is set but missing, unreadable
    or empty is an AuthConfigError (one line): it never turns auth off silently."""
    env_token = os.environ.get("DEBLUR_API_TOKEN")
    if env_token is not None:
        if not env_token.strip():
            raise AuthConfigError("DEBLUR_API_TOKEN is set but empty; unset it to run without auth")
        return TokenCheck.of(env_token.strip())
    token_file = token_file or os.environ.get("DEBLUR_API_TOKEN_FILE")
    if token_file is None:
        return None
    try:
        token = Path(token_file).read_text().strip()
    except OSError as e:
        raise AuthConfigError(
            f"API token file {token_file}: {e.strerror or type(e).__name__}; the endpoint will "
            "not start without it (mount the secret, or unset DEBLUR_API_TOKEN_FILE)"
        ) from None
    except UnicodeDecodeError:
        raise AuthConfigError(f"API token file {token_file}: not text") from None
    if not token:
        raise AuthConfigError(f"API token file {token_file} is empty; the endpoint will not start without a token")
    return TokenCheck.of(token)


@dataclass
class Limits:
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 24_000_000  # 24 Mpx, e.g. 6000×4000
    token: TokenCheck | None = None

    @property
    def auth(self) -> bool:
        return self.token is not None

    @classmethod
    def of(cls, max_bytes: int | None = None, max_pixels: int | None = None, token: TokenCheck | None = None):
        """The limits with the defaults where a value is None."""
        return cls(max_bytes or cls.max_bytes, max_pixels or cls.max_pixels, token)

    def authorised(self, authorization: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token.matches(given.strip())

    def check_auth(self, authorization: str | None) -> None:
        if not self.authorised(authorization):
            raise RequestError(401, "unauthorized", "send 'Authorization: Bearer <token>'")

    def check_length(self, content_length: str | None) -> None:
        if content_length and content_length.isdigit() and int(content_length) > self.max_bytes:
            raise RequestError(413, "body too large", f"{int(content_length)} bytes > limit {self.max_bytes}")


def check_content_type(content_type: str) -> str:
    """'raw' for image/* bodies, 'multipart' for forms; anything else is 415."""
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("image/"):
        return "raw"
    if kind == "multipart/form-data":
        return "multipart"
    raise RequestError(
        415,
        "unsupported media type",
        f"got {kind or 'no Content-Type'}; send the image as the body (image/*) or as multipart 'file'",
    )
