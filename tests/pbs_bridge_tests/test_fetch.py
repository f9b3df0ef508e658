"""URL inputs never reach the internal network unless the operator says.

The policy is checked on addresses (no packet is sent to a refused
one: the loopback test server counts what it receives), at every
redirect, with one resolution per connection, and every refusal or
failure reads the same.
"""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest

from pbs_bridge.fetch import UNREACHABLE, FetchError, FetchPolicy, fetch

UA = "qualityfits-uws-worker/test"


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.5.4", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",  # noqa: S104
    "255.255.255.255", "192.0.2.7", "::1", "::", "fe80::1", "fc00::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2001:db8::1",
    "64:ff9b::a00:1", "2002:a00:1::1", "2001:0:4136:e378:8000:63bf:f5ff:fffe"])
def test_addresses_that_are_not_public_are_refused(address):
    assert not FetchPolicy().permits(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "193.48.1.1",
                                     "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert FetchPolicy().permits(address)


def test_the_allow_list_opens_networks_and_names():
    policy = FetchPolicy(("10.2.0.0/16", "::1", "Archive.Example.org"))
    assert policy.permits("10.2.3.4")
    assert not policy.permits("10.3.0.1")
    assert policy.permits("::1")
    assert policy.permits("::ffff:10.2.0.1")  # mapped: the IPv4 rule
    assert policy.names == frozenset({"archive.example.org"})


@pytest.mark.parametrize("host", ["localhost", "0x7f000001", "2130706433",
                                  "127.1", "0"])
def test_names_and_spellings_of_loopback_are_resolved_and_refused(host):
    with pytest.raises(OSError, match="not allowed"):
        FetchPolicy().resolve(host, 80)


# -- against a real server on loopback ---------------------------------------
class _Counting(http.server.SimpleHTTPRequestHandler):
    seen: list[str]

    def do_GET(self):
        self.seen.append(self.path)
        if self.path == "/redirect":  # to this server by its address
            port = self.server.server_address[1]
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/field.fits")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path: Path):
    (tmp_path / "field.fits").write_bytes(b"SIMPLE  =" + bytes(2871))
    seen: list[str] = []

    def handler(*args, **kwargs):
        made = type("Handler", (_Counting,), {"seen": seen})
        return made(*args, directory=str(tmp_path), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], seen
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _fetch(url: str, tmp_path: Path, *allow: str) -> int:
    return fetch("image", url, tmp_path / "out" / "image.fits", limit=10**6,
                 timeout=5, policy=FetchPolicy(allow), user_agent=UA)


def _refused(url: str, tmp_path: Path, *allow: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        _fetch(url, tmp_path, *allow)
    assert info.value.kind == "transient"
    assert info.value.message == f"image: cannot fetch {url}: {UNREACHABLE}"
    return info.value


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost",
                                  "[::ffff:127.0.0.1]", "0x7f000001"])
def test_no_packet_reaches_a_refused_address(server, tmp_path, host):
    port, seen = server
    _refused(f"http://{host}:{port}/field.fits", tmp_path)
    assert seen == []  # the server heard nothing


def test_an_allowed_archive_is_fetched(server, tmp_path):
    port, seen = server
    assert _fetch(f"http://127.0.0.1:{port}/field.fits", tmp_path,
                  "127.0.0.1") == 2880
    assert seen == ["/field.fits"]
    assert _fetch(f"http://localhost:{port}/field.fits", tmp_path,
                  "localhost") == 2880


def test_a_redirect_is_checked_again(server, tmp_path):
    """Allowed by its name, the server redirects to a refused address."""
    port, seen = server
    _refused(f"http://localhost:{port}/redirect", tmp_path, "localhost")
    assert seen == ["/redirect"]  # the redirect was not followed


@pytest.mark.usefixtures("server")
def test_refused_and_unreachable_read_the_same(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    policy_refusal = _refused(f"http://10.1.2.3:{closed}/x", tmp_path)
    connection_refused = _refused(f"http://10.1.2.3:{closed}/x", tmp_path,
                                  "127.0.0.1")  # allowed, but not this one
    no_listener = _refused(f"http://127.0.0.1:{closed}/x", tmp_path,
                           "127.0.0.1")
    unknown = _refused("http://no-such-host.invalid/x", tmp_path)
    messages = {e.message.split(": ", 2)[2] for e in (
        policy_refusal, connection_refused, no_listener, unknown)}
    assert messages == {UNREACHABLE}


def test_one_resolution_per_connection(server, tmp_path, monkeypatch):
    """The address connected to is the one checked (no rebinding)."""
    port, _ = server
    calls: list[str] = []
    real = socket.getaddrinfo

    def counted(host, *args, **kwargs):
        calls.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counted)
    _fetch(f"http://localhost:{port}/field.fits", tmp_path, "127.0.0.0/8")
    assert calls == ["localhost"]


def test_environment_proxies_are_not_used(server, tmp_path, monkeypatch):
    port, seen = server
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # would fail
    assert _fetch(f"http://127.0.0.1:{port}/field.fits", tmp_path,
                  "127.0.0.1") == 2880
    assert seen == ["/field.fits"]
