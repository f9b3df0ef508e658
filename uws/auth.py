"""Who is calling: authentication policies, each giving an `Identity`.

``qfits.auth`` chooses the policy by a short name or ``module:Class``:

* ``anonymous`` (the embedded default): no identity; every job is
  everybody's (the identity sees all) and ``ownerId`` is nil.
* ``basic``: HTTP basic authentication against ``qfits.auth_user_file``,
  one ``user:pbkdf2_sha256$iterations$salt$hash`` line per user (write
  lines with ``python -m uws.auth FILE USER``, which reads the password
  from standard input).  Serve it behind TLS.
* ``header``: a trusted reverse proxy authenticates and passes the user
  name in ``qfits.auth_header``; the service must then be reachable only
  through that proxy.

Each owner sees and touches only their own jobs, unless the policy's
`Identity` says it sees everyone.  A new policy is one class, named in
``qfits.auth`` as ``module:Class``: it has a ``settings_type`` (a frozen
dataclass of `pbs_bridge.config.option` fields: its ``qfits.*`` keys),
is built as ``Class(settings)``, and has ``identify(request)``
(`Identity`, or `uws.errors.NotAuthenticatedError`) and ``challenge()``
(the headers of a 401).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pbs_bridge.config import SettingsError, option
from pbs_bridge.runner import load_class
from uws.errors import (
    NotAuthenticatedError,
    ServiceUnavailableError,
    TooManyRequestsError,
)

ITERATIONS = 200_000


def hash_password(password: str, *, salt: str | None = None,
                  iterations: int = ITERATIONS) -> str:
    """Return the user-file form of a password."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(),
                                 iterations).hex()
    return f"pbkdf2_sha256${iterations}${salt}${digest}"


def _parsed(stored: str) -> tuple[int, str, str] | None:
    """Return the rounds, salt and digest of a `hash_password` string.

    None where it is not one (another scheme, rounds below 1).
    """
    try:
        scheme, iterations, salt, digest = stored.split("$")
        rounds = int(iterations)
    except ValueError:
        return None
    if scheme != "pbkdf2_sha256" or rounds < 1:
        return None
    return rounds, salt, digest


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a `hash_password` string."""
    parsed = _parsed(stored)
    if parsed is None:
        return False
    rounds, salt, digest = parsed
    made = hash_password(password, salt=salt, iterations=rounds)
    return hmac.compare_digest(made.rsplit("$", 1)[1], digest)


@dataclass(frozen=True)
class Identity:
    """Who calls: the owner recorded with their jobs, and what they see.

    ``name`` is None for an anonymous caller; ``sees_all`` lets the
    caller see and touch every job (anonymous mode: everyone is the
    same nobody).
    """

    name: str | None
    sees_all: bool = False

    def may_see(self, owner: str | None) -> bool:
        """Whether a job of ``owner`` is visible to this caller."""
        return self.sees_all or owner == self.name


#: The caller of the ``anonymous`` policy.
ANONYMOUS = Identity(None, sees_all=True)


class AuthPolicy(Protocol):
    """What the service asks of an authentication policy."""

    def identify(self, request: Any) -> Identity:
        """Return the caller (`NotAuthenticatedError`: 401)."""

    def challenge(self) -> dict[str, str]:
        """Return the headers of a 401 answer."""


@dataclass(frozen=True)
class NoSettings:
    """A policy without settings."""


class AnonymousPolicy:
    """No authentication: every caller is the same, and sees every job."""

    settings_type = NoSettings

    def __init__(self, settings: NoSettings) -> None:
        del settings

    def identify(self, request: Any) -> Identity:
        """Return the anonymous identity."""
        del request
        return ANONYMOUS

    def challenge(self) -> dict[str, str]:
        """Return no header (never asked)."""
        return {}


#: An RFC 9110 (11.3) challenge: an auth-scheme token, then parameters
#: or a token68, on one line.
_CHALLENGE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?: [\x20-\x7e]+)?")


@dataclass(frozen=True)
class HeaderSettings:
    """``qfits.auth = header``: the trusted proxy's header."""

    auth_header: str = option("X-Remote-User", "str")
    auth_challenge: str = option('Proxy realm="QualityFITS-UWS"', "str")

    def __post_init__(self) -> None:
        """Refuse a challenge that is no ``auth-scheme [params]``."""
        if not _CHALLENGE.fullmatch(self.auth_challenge):
            raise SettingsError(
                f"qfits.auth_challenge {self.auth_challenge[:60]!r} is no "
                'HTTP challenge (a scheme, then optional parameters: '
                'Basic realm="archive", Negotiate)')


class HeaderPolicy:
    """A trusted reverse proxy names the user in a header."""

    settings_type = HeaderSettings

    def __init__(self, settings: HeaderSettings) -> None:
        self.header = settings.auth_header
        self._challenge = settings.auth_challenge

    def identify(self, request: Any) -> Identity:
        """Return the user the proxy names (401 without the header)."""
        user = (request.headers.get(self.header) or "").strip()
        if not user:
            raise NotAuthenticatedError(
                f"authentication required (no {self.header} header from "
                "the proxy)")
        return Identity(user)

    def challenge(self) -> dict[str, str]:
        """Return the deployment's challenge (RFC 9110 needs one on a 401).

        The proxy authenticates; a request that reached the service
        without its header gets the challenge ``qfits.auth_challenge``
        names: by default a scheme no browser knows (``Proxy``), so a
        browser shows the page's message rather than a password prompt
        the service could not check; a deployment whose proxy answers
        a scheme (``Basic``, ``Negotiate``) names it there.
        """
        return {"WWW-Authenticate": self._challenge}


@dataclass(frozen=True)
class BasicSettings:
    """``qfits.auth = basic``: the user file and the realm."""

    auth_user_file: Path | None = option(None, "optional_path")
    auth_realm: str = option("QualityFITS-UWS", "str")

    def __post_init__(self) -> None:
        """Refuse basic authentication without a user file."""
        if self.auth_user_file is None:
            raise SettingsError(
                "qfits.auth = basic needs qfits.auth_user_file")


#: Failed logins of one user from one address within `FAILURE_WINDOW`
#: seconds after which that pair is refused (429) without a password
#: check until the window has passed; failed logins of any names from
#: one address after which that address is (a password check costs the
#: service ~30 ms of CPU, whatever the name).
MAX_FAILURES = 10
MAX_ADDRESS_FAILURES = 100
FAILURE_WINDOW = 60.0
#: Verified (user, password digest) pairs kept, and (address, name)
#: pairs and addresses whose failures are counted: all bounded.
VERIFIED_CACHE = 256
FAILURE_TABLE = 4096


class _Failures:
    """Recent failures per key, at most `FAILURE_TABLE` keys (oldest out).

    Not locked: its owner holds its lock around every call.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._times: OrderedDict[Any, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._times)

    def wait(self, key: Any, now: float) -> float:
        """Seconds ``key`` must wait (0: it may try)."""
        recent = [t for t in self._times.get(key, [])
                  if now - t < FAILURE_WINDOW]
        if len(recent) < self.limit:
            return 0.0
        return FAILURE_WINDOW - (now - recent[0])

    def add(self, key: Any, now: float) -> None:
        """Count one failure of ``key``."""
        recent = [t for t in self._times.pop(key, [])
                  if now - t < FAILURE_WINDOW]
        self._times[key] = [*recent, now][-self.limit:]
        while len(self._times) > FAILURE_TABLE:
            self._times.popitem(last=False)

    def forget(self, key: Any) -> None:
        """Drop the failures of ``key`` (it logged in)."""
        self._times.pop(key, None)


class BasicPolicy:
    """HTTP basic authentication against a user file.

    A password check costs a PBKDF2 (~30 ms): right ones are cached (at
    most `VERIFIED_CACHE`, least recently used first out), wrong ones
    never are.  A name that is no user costs the same check, against a
    hash of nothing, so that the time of the answer does not tell
    which names are users.  `MAX_FAILURES` failures for one name from
    one address within `FAILURE_WINDOW` seconds make that pair wait
    (429), and `MAX_ADDRESS_FAILURES` for any names make the address
    wait, until the window has passed, without a check.  Users' and
    other names' failures are counted in tables of their own, so that a
    flood of made-up names cannot push a guessed user's failures out.
    """

    settings_type = BasicSettings

    def __init__(self, settings: BasicSettings) -> None:
        assert settings.auth_user_file is not None  # BasicSettings checks
        self.user_file: Path = settings.auth_user_file
        self.realm = settings.auth_realm
        self._users: dict[str, str] = {}
        self._mtime = -1.0
        self._verified: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._failures = _Failures(MAX_FAILURES)  # (address, user)
        self._strangers = _Failures(MAX_FAILURES)  # (address, other name)
        self._addresses = _Failures(MAX_ADDRESS_FAILURES)
        self._nobody = ""  # a hash like the users': `_load`
        self._lock = threading.Lock()
        self._load()

    def identify(self, request: Any) -> Identity:
        """Return the user whose password is right (401 otherwise)."""
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
        key = (user, hashlib.sha256(password.encode()).hexdigest())
        with self._lock:
            known = key in self._verified
            if known:
                self._verified.move_to_end(key)
        if known:
            return Identity(user)
        address = str(request.remote_addr or "?")
        who = (address, user)
        stored = self._users.get(user)
        table = self._failures if stored is not None else self._strangers
        self._check_throttle(table, who, address)
        if not check_password(password, stored or self._nobody) \
                or stored is None:
            now = time.monotonic()
            with self._lock:
                table.add(who, now)
                self._addresses.add(address, now)
            raise NotAuthenticatedError("unknown user or wrong password")
        with self._lock:
            self._verified[key] = True
            if len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)
            self._failures.forget(who)
        return Identity(user)

    def _check_throttle(self, table: _Failures, who: tuple[str, str],
                        address: str) -> None:
        now = time.monotonic()
        with self._lock:
            pair = table.wait(who, now)
            anyone = self._addresses.wait(address, now)
        if pair > 0:
            raise TooManyRequestsError(
                f"{MAX_FAILURES} failed logins for this user from this "
                f"address within {FAILURE_WINDOW:.0f} s: try again in "
                f"{pair:.0f} s")
        if anyone > 0:
            raise TooManyRequestsError(
                f"{MAX_ADDRESS_FAILURES} failed logins from this address "
                f"within {FAILURE_WINDOW:.0f} s: try again in "
                f"{anyone:.0f} s")

    def challenge(self) -> dict[str, str]:
        """Ask for basic credentials."""
        return {"WWW-Authenticate":
                f'Basic realm="{self.realm}", charset="UTF-8"'}

    def _load(self) -> None:
        """(Re)read the user file when it changed."""
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
        # What a name that is no user is checked against: a hash of
        # nothing with the users' most common number of rounds, so that
        # it takes as long as theirs.
        rounds = Counter(parsed[0] for parsed in map(_parsed, users.values())
                         if parsed is not None).most_common(1)
        nobody = hash_password(secrets.token_hex(16),
                               iterations=rounds[0][0] if rounds
                               else ITERATIONS)
        with self._lock:
            self._users, self._mtime = users, mtime
            self._nobody = nobody
            self._verified.clear()


#: The policies known by a short name (``qfits.auth``).
POLICIES = {
    "anonymous": "uws.auth:AnonymousPolicy",
    "basic": "uws.auth:BasicPolicy",
    "header": "uws.auth:HeaderPolicy",
}


def policy_class(name: str) -> Any:
    """Return the policy class ``qfits.auth`` names (SettingsError)."""
    cls = load_class("qfits.auth", name, POLICIES)
    if not hasattr(cls, "settings_type"):
        raise SettingsError(
            f"qfits.auth: {name} has no settings_type (see uws.auth)")
    return cls


def make_policy(name: str, settings: Any) -> AuthPolicy:
    """Build the policy ``name`` with its settings (`policy_class`)."""
    policy: AuthPolicy = policy_class(name)(settings)
    return policy


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
