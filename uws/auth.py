"""Who is calling: anonymous, HTTP basic against a user file, or a header.

* ``anonymous`` (the embedded default): no identity; every job is
  everybody's and ``ownerId`` is nil.
* ``basic``: HTTP basic authentication against ``qfits.auth_user_file``,
  one ``user:pbkdf2_sha256$iterations$salt$hash`` line per user (write
  lines with ``python -m uws.auth FILE USER``, which reads the password
  from standard input).  Serve it behind TLS.
* ``header``: a trusted reverse proxy authenticates and passes the user
  name in ``qfits.auth_header``; the service must then be reachable only
  through that proxy.

Each owner sees and touches only their own jobs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import sys
import threading
from pathlib import Path
from typing import Any

from uws.errors import NotAuthenticatedError, ServiceUnavailableError
from uws.settings import Settings

ITERATIONS = 200_000


def hash_password(password: str, *, salt: str | None = None,
                  iterations: int = ITERATIONS) -> str:
    """Return the user-file form of a password."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(),
                                 iterations).hex()
    return f"pbkdf2_sha256${iterations}${salt}${digest}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a `hash_password` string."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        rounds = int(iterations)
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    made = hash_password(password, salt=salt, iterations=rounds)
    return hmac.compare_digest(made.rsplit("$", 1)[1], digest)


class Authenticator:
    """Find the caller's identity for the configured mode."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth
        self.header = settings.auth_header
        self.realm = settings.auth_realm
        self.user_file = settings.auth_user_file
        self._users: dict[str, str] = {}
        self._mtime = -1.0
        self._verified: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        if self.mode == "basic":
            self._load()

    def identify(self, request: Any) -> str | None:
        """Return the caller's user name (None when anonymous; 401)."""
        if self.mode == "anonymous":
            return None
        if self.mode == "header":
            user = (request.headers.get(self.header) or "").strip()
            if not user:
                raise NotAuthenticatedError(
                    f"authentication required (no {self.header} header "
                    "from the proxy)")
            return user
        return self._basic(request)

    def challenge(self) -> dict[str, str]:
        """Headers of a 401 answer."""
        if self.mode == "basic":
            return {"WWW-Authenticate":
                    f'Basic realm="{self.realm}", charset="UTF-8"'}
        return {}

    def _basic(self, request: Any) -> str:
        header = request.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            raise NotAuthenticatedError("authentication required")
        try:
            user, _, password = base64.b64decode(token.strip(), validate=True
                                                 ).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise NotAuthenticatedError("malformed basic credentials"
                                        ) from None
        self._load()
        stored = self._users.get(user)
        key = (user, hashlib.sha256(password.encode()).hexdigest())
        with self._lock:
            known = self._verified.get(key)
        if known is None:
            known = stored is not None and check_password(password, stored)
            with self._lock:
                self._verified[key] = known
        if not known:
            raise NotAuthenticatedError("unknown user or wrong password")
        return user

    def _load(self) -> None:
        """(Re)read the user file when it changed."""
        assert self.user_file is not None
        try:
            mtime = self.user_file.stat().st_mtime
        except OSError as exc:
            raise ServiceUnavailableError(
                f"the user file cannot be read: {exc.strerror}") from None
        if mtime == self._mtime:
            return
        users = {}
        for raw in self.user_file.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#") and ":" in line:
                name, _, stored = line.partition(":")
                users[name.strip()] = stored.strip()
        with self._lock:
            self._users, self._mtime, self._verified = users, mtime, {}


def main(argv: list[str] | None = None) -> int:
    """Add or replace a user in a user file (password on stdin)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m uws.auth USER_FILE USER  (password on "
              "standard input)", file=sys.stderr)
        return 2
    path, user = Path(args[0]), args[1]
    if not user or ":" in user or any(c.isspace() for c in user):
        print("uws.auth: a user name has no colon or space", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("uws.auth: empty password", file=sys.stderr)
        return 2
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [ln for ln in lines if ln.partition(":")[0].strip() != user]
    lines.append(f"{user}:{hash_password(password)}")
    path.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
