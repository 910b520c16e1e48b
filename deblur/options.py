"""The one way entry points take arguments: pydantic models that refuse unknown keys and bad values with one
line naming the argument, checked before Ray starts (a typo should cost a second, not a cluster's start-up).

The training config (config.py), Serve's application arguments, the bulk, video and evaluation options all
derive from `Strict`, so every job reports a bad argument the same way.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A bad config or argument; the message is one line naming the key."""


S = TypeVar("S", bound="Strict")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def parse(cls: type[S], data: "S | dict[str, Any] | None", what: str = "config") -> S:
        """`data` validated (an instance passes through), or a ConfigError: '<what>: <key>: <reason>'."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data or {})
        except ValidationError as e:
            raise ConfigError(f"{what}: {one_line(e)}") from None


def one_line(e: ValidationError) -> str:
    """A pydantic error as '<dotted key>: <reason>' (+ how many more), without pydantic's boilerplate; a check
    across several keys has no key to name."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"
