"""Plug-ins as a deployment would write them, outside the project's packages.

`NiceRunner` is a runner with a setting of its own (``qfits.nice_level``)
that runs each worker under ``nice``; `TokenPolicy` is an authentication
policy reading bearer tokens from a file of its own
(``qfits.token_file``), where an operator token sees every job.  The
service loads them by ``module:Class`` (``qfits.runner``, ``qfits.auth``)
without any change in ``uws``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbs_bridge.config import option
from pbs_bridge.local import LocalRunner, LocalSettings
from uws.auth import Identity
from uws.errors import NotAuthenticatedError

MODULE = "tests.uws_tests.pluginkit"


@dataclass(frozen=True)
class NiceSettings(LocalSettings):
    """The local runner's settings and the niceness of the workers."""

    nice_level: int = option(10, "int", minimum=0, maximum=19)


class NiceRunner(LocalRunner):
    """The local runner, with every worker under ``nice -n LEVEL``."""

    name = "nice"
    settings_type = NiceSettings

    def __init__(self, settings: NiceSettings) -> None:
        super().__init__(settings)
        self.command = ["nice", "-n", str(settings.nice_level),
                        *self.command]


@dataclass(frozen=True)
class TokenSettings:
    """``qfits.token_file``: ``TOKEN USER [operator]`` lines."""

    token_file: Path = option(Path("tokens"), "path")


class TokenPolicy:
    """Bearer tokens; an ``operator`` line sees every user's jobs."""

    settings_type = TokenSettings

    def __init__(self, settings: TokenSettings) -> None:
        self.tokens: dict[str, Identity] = {}
        for line in settings.token_file.read_text().splitlines():
            token, user, *rest = line.split()
            self.tokens[token] = Identity(user,
                                          sees_all=rest == ["operator"])

    def identify(self, request: Any) -> Identity:
        """Return the token's user (401 without a known token)."""
        scheme, _, token = (request.headers.get("Authorization") or ""
                            ).partition(" ")
        who = self.tokens.get(token.strip()) if scheme == "Bearer" else None
        if who is None:
            raise NotAuthenticatedError("a bearer token is required")
        return who

    def challenge(self) -> dict[str, str]:
        """Ask for a bearer token."""
        return {"WWW-Authenticate": 'Bearer realm="qfits"'}
