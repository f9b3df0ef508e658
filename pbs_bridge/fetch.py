"""Fetching an input given by URL, without reaching the internal network.

A job's image, flat or mask may be an http(s) URL that the worker
downloads.  Left to itself that is a server-side request forgery: a
client could make the service's machine (or a batch node) talk to
``http://127.0.0.1:22/``, a metadata endpoint or any private host, and
read the answer off the error message.  So:

* only ``http`` and ``https``, at the start and at every redirect;
* the host's name is resolved once, every address it resolves to is
  checked, and the connection goes to the address that was checked (a
  second resolution, DNS rebinding, is never made); an address that is
  not public (loopback, private, shared, link-local, multicast,
  reserved, unspecified, IPv4 and IPv6, IPv4-mapped IPv6 included; of
  IPv6, only global unicast 2000::/3 and the NAT64 prefix 64:ff9b::/96
  can be public) is refused before any packet is sent to it, unless the
  operator allows it: `FetchPolicy` takes host names and networks
  (``qfits.fetch_allow``: a data centre's own archive);
* no proxy from the environment is used;
* every refused address and every connection failure (unknown name,
  refused, unreachable, timed out) ends in the same message, which says
  nothing about which of them it was.

An HTTP error status from a host that was allowed is reported as it is
(``HTTP 404 Not Found``): that host is public or trusted.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

#: URL schemes the worker fetches.
URL_SCHEMES = ("http", "https")
#: The one message of a refused address or a failed connection.
UNREACHABLE = ("the host cannot be reached from the service (an unknown "
               "name, an address the service may not contact, or no "
               "answer)")
#: HTTP statuses worth trying again later (besides 5xx).
TRANSIENT_HTTP = (408, 429)
CHUNK = 1 << 20  # bytes read from the network at a time

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """A fetch that failed: ``kind`` is usage, transient or fatal."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _RefusedError(OSError):
    """An address the policy does not allow (never connected to)."""


@dataclass(frozen=True)
class FetchPolicy:
    """Which hosts a fetch may connect to besides public addresses.

    ``allow`` holds host names (matched without case) and IP networks
    or addresses (``10.2.0.0/16``, ``127.0.0.1``, ``::1``).
    """

    allow: tuple[str, ...] = ()
    names: frozenset[str] = field(init=False, repr=False)
    networks: tuple[Network, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Split the allow-list into names and networks."""
        names, networks = set(), []
        for entry in self.allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.strip().lower().rstrip("."))
        object.__setattr__(self, "names", frozenset(names))
        object.__setattr__(self, "networks", tuple(networks))

    def permits(self, address: str) -> bool:
        """Whether a connection to ``address`` is allowed.

        An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4,
        Teredo) is judged by that IPv4 address too.
        """
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.networks):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and not any(
                ip in net for net in _IPV6_PUBLIC):
            # ::/96 (IPv4-compatible), ::ffff:0:0:0/96 (SIIT), the
            # local-use NAT64 prefix, fec0::/10 (site-local)...: Python
            # calls several of them global.
            return False
        return all(one.is_global and not one.is_multicast
                   for one in _carried(ip))

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """Resolve ``host`` once; refuse it if any address is not allowed.

        A name on the allow-list may resolve to anything.
        """
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise _RefusedError(f"cannot resolve {host}") from exc
        if not found:
            raise _RefusedError(f"no address for {host}")
        if host.strip().lower().rstrip(".") in self.names:
            return found
        bad = [str(info[4][0]) for info in found
               if not self.permits(str(info[4][0]))]
        if bad:
            raise _RefusedError(f"{host} resolves to {bad[0]}, not allowed")
        return found


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: The only IPv6 networks with public addresses: global unicast
#: (2000::/3; Python's ``is_global`` then rules out its special blocks)
#: and the well-known NAT64 prefix, judged by the IPv4 address it carries.
_IPV6_PUBLIC = (ipaddress.IPv6Network("2000::/3"), _NAT64)


def _carried(ip: Address) -> list[Address]:
    """Return the address and the IPv4 addresses an IPv6 one carries."""
    found: list[Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64:
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
    return found


def _connect(policy: FetchPolicy, host: str, port: int,
             timeout: float | None) -> socket.socket:
    """Connect to an address of ``host`` that the policy checked."""
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in policy.resolve(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise last or _RefusedError(f"no address of {host} answers")


class _CheckedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket goes where its policy allows.

    ``http.client`` opens the socket with the instance's
    ``_create_connection``; ours resolves, checks and connects to the
    checked address.
    """

    def __init__(self, host: str, *, policy: FetchPolicy,
                 **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._create_connection = functools.partial(_connect_to, policy)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    """The same for HTTPS (the certificate is checked against the name)."""

    def __init__(self, host: str, *, policy: FetchPolicy,
                 **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._create_connection = functools.partial(_connect_to, policy)


def _connect_to(policy: FetchPolicy, address: tuple[str, int],
                timeout: float | None = None, *_: Any) -> socket.socket:
    return _connect(policy, address[0], address[1], timeout)


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        self.policy = policy

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(
            _CheckedHTTPConnection, policy=self.policy), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        self.policy = policy

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(
            _CheckedHTTPSConnection, policy=self.policy), req,
            context=self._context)  # type: ignore[attr-defined]


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) URLs only (urllib also allows ftp)."""

    def redirect_request(
            self, req: urllib.request.Request, fp: IO[bytes], code: int,
            msg: str, headers: Any, newurl: str,
    ) -> urllib.request.Request | None:
        """Refuse a redirect to another scheme with an HTTP error."""
        scheme = urlsplit(newurl).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise urllib.error.HTTPError(
                newurl, code, f"{msg}, redirect to {newurl} refused "
                "(http or https only)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """Return an opener that connects only where ``policy`` allows."""
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _CheckedHTTPHandler(policy),
        _CheckedHTTPSHandler(policy), _HttpOnlyRedirects())


def fetch(label: str, url: str, dest: Path, *, limit: int, timeout: float,
          policy: FetchPolicy, user_agent: str,
          cleanup: list[Path] | None = None) -> int:
    """Download ``url`` into ``dest``; return the number of bytes.

    Parameters
    ----------
    label : str
        Which input (``"image"``, ``"flat"``, ``"mask"``), for messages.
    url : str
        An http or https URL.
    dest : Path
        Where to write the file (replaced only once it is complete).
    limit : int
        Largest size accepted [bytes].
    timeout : float
        Seconds to wait for the connection and for each read.
    policy : FetchPolicy
        Where the fetch may connect (besides public addresses).
    user_agent : str
        The ``User-Agent`` header.
    cleanup : list of Path, optional
        The partial file is listed here while it exists (removed by a
        signal handler).

    Raises
    ------
    FetchError
        "usage" for an HTTP error status, a file over the limit or a
        malformed URL; "transient" for an unreachable host (`UNREACHABLE`)
        or a 5xx, 408 or 429 status; "fatal" when the file cannot be
        written.
    """
    where = f"{label}: cannot fetch {url}"
    scheme = urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise FetchError("usage", f"{where}: the {scheme} scheme is not "
                         "supported (http or https only)")
    request = urllib.request.Request(  # noqa: S310 - scheme checked
        url, headers={"User-Agent": user_agent})
    try:
        response = opener(policy).open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        kind = ("transient" if exc.code >= 500 or exc.code in TRANSIENT_HTTP
                else "usage")
        raise FetchError(kind, f"{where}: HTTP {exc.code} {exc.reason}"
                         ) from None
    except (http.client.InvalidURL, ValueError) as exc:
        raise FetchError("usage", f"{label}: invalid URL {url}: {exc}"
                         ) from None
    except (OSError, http.client.HTTPException):
        # Refused by the policy, unknown, refused, unreachable, silent:
        # one message for all (which one it was would map the network).
        raise FetchError("transient", f"{where}: {UNREACHABLE}") from None
    return _save(response, label, url, dest, limit, cleanup)


def _save(response: Any, label: str, url: str, dest: Path, limit: int,
          cleanup: list[Path] | None) -> int:
    too_big = FetchError("usage", f"{label}: {url} is larger than the "
                         f"fetch limit of {limit} bytes")
    part = dest.with_name(f".{dest.name}.part")
    with response:
        length = response.headers.get("Content-Length", "")
        if length.strip().isdigit() and int(length) > limit:
            raise too_big
        if cleanup is not None:
            cleanup.append(part)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            total = 0
            with part.open("wb") as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException):
                        raise FetchError(
                            "transient", f"{label}: cannot fetch {url}: "
                            "the connection broke off") from None
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > limit:
                        raise too_big
                    out.write(chunk)
            part.replace(dest)
        except OSError as exc:
            # The service's fault; its paths are nobody's business.
            reason = exc.strerror or type(exc).__name__
            raise FetchError("fatal", f"{label}: cannot store the fetched "
                             f"file: {reason}") from None
        finally:
            with contextlib.suppress(OSError):  # its folder may be the fault
                part.unlink(missing_ok=True)
            if cleanup is not None:
                cleanup.remove(part)
    return total


def policy_from(entries: Iterable[str]) -> FetchPolicy:
    """Build the policy of an allow-list (``WorkerSpec.fetch_allow``)."""
    return FetchPolicy(tuple(str(e) for e in entries if str(e).strip()))
