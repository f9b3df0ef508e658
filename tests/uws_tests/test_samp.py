"""SAMP from the results page: the page's buttons against a real hub.

A real hub (`pyvo.samp.SAMPHubServer`, astropy's former one, now
deprecated there) with its Web Profile on the profile's fixed port 21012
of 127.0.0.1, registrations accepted by a dialog that says yes and
records who asked, and a real desktop-like
client (`pyvo.samp.SAMPIntegratedClient`, Standard Profile) that
subscribes to ``table.load.votable`` and ``image.load.fits`` and records
what it gets.  The results page of a real job, in the system Chromium,
sends through ``uws/static/samp.js``; the client then downloads every
URL it was given, without the browser's credentials, and reads it as a
VOTable or a FITS file.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from astropy.io import fits, votable
from pyvo.samp import (
    SAMPHubServer,
    SAMPIntegratedClient,
    WebProfileDialog,
    conf,
)
from test_web import Starter, browser, page, shot  # noqa: F401 - fixtures
from uwskit import LiveService, wait_for

from uws.auth import hash_password

#: The Web Profile's fixed port (SAMP 1.3, section 5.1).
WEB_PORT = 21012
TABLES = "table.load.votable"
IMAGES = "image.load.fits"
NO_HUB = ("No SAMP hub found: start TOPCAT or DS9 (or another SAMP hub) "
          "and try again.")


def web_port_free() -> bool:
    """Whether nothing listens on 127.0.0.1:21012 (and it can be bound).

    With SO_REUSEADDR, as the hub binds it: the connections of a hub
    just stopped may linger (TIME_WAIT).
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", WEB_PORT))
        except OSError:
            return False
    return True


def require_web_port() -> None:
    """Skip when the Web Profile's port is taken (a hub runs already)."""
    if not web_port_free():
        pytest.skip(f"port {WEB_PORT} of 127.0.0.1 is in use (a SAMP hub "
                    "with a Web Profile runs already?): the test needs it")


class YesDialog(WebProfileDialog):
    """The hub's consent dialog, answered yes; remembers who asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str]] = []  # (samp.name, origin)
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def show_dialog(self, samp_name: str, details: Any, client: Any,
                    origin: str) -> None:
        """Accept the registration (as a user clicking yes)."""
        del details, client
        self.asked.append((samp_name, origin))
        self.consent()

    def _poll(self) -> None:
        while self.running:
            self.handle_queue()
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop answering."""
        self.running = False
        self.thread.join(timeout=5)


class Receiver:
    """A desktop-like SAMP client recording the loads it is sent."""

    def __init__(self, hub: SAMPHubServer) -> None:
        self.received: list[tuple[str, dict[str, str]]] = []
        self.client = SAMPIntegratedClient(
            name="qfits-test-viewer", description="records loads")
        self.client.connect(hub=hub, pool_size=1)
        for mtype in (TABLES, IMAGES):
            self.client.bind_receive_notification(mtype, self._receive)

    def _receive(self, private_key: str, sender_id: str, mtype: str,
                 params: dict[str, str], extra: Any) -> None:
        del private_key, sender_id, extra
        self.received.append((mtype, dict(params)))

    def others(self) -> list[str]:
        """Return the names of the other clients of the hub."""
        return [self.client.get_metadata(c).get("samp.name", c)
                for c in self.client.get_registered_clients()]

    def of(self, mtype: str) -> list[dict[str, str]]:
        """Return the parameters of the messages of an MType."""
        return [params for kind, params in self.received if kind == mtype]


@contextlib.contextmanager
def running_hub(tmp_path: Path) -> Iterator[tuple[YesDialog, Receiver]]:
    """Run a hub with its Web Profile and a receiver; stop both after."""
    require_web_port()
    dialog = YesDialog()
    dialog.thread.start()
    with conf.set_temp("use_internet", value=False):
        hub = SAMPHubServer(web_profile_dialog=dialog, addr="127.0.0.1",
                            lockfile=str(tmp_path / "samp-hub"),
                            web_port=WEB_PORT, pool_size=1)
        hub.start()
        receiver = None
        try:
            if not hub._web_profile:  # port taken between check and start
                pytest.skip(f"the hub could not open port {WEB_PORT}")
            receiver = Receiver(hub)
            yield dialog, receiver
        finally:
            if receiver is not None and receiver.client.is_connected:
                receiver.client.disconnect()
            hub.stop()
            dialog.stop()


def download(url: str) -> bytes:
    """GET a URL as a desktop tool would: no cookies, no credentials."""
    with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310
        body: bytes = answer.read()
    return body


def completed_job(live: LiveService, image: Path) -> str:
    """Run a job on ``image`` through the API; return its id."""
    url = live.run_image(image)
    assert live.wait_phase(url, {"COMPLETED", "ERROR"}) == "COMPLETED"
    return url.rsplit("/", 1)[1]


def status(shown: Any, expected: str) -> str:
    """Wait for the SAMP status line to contain ``expected``; return it."""
    shown.wait_for_function(
        "t => document.getElementById('samp-status').textContent"
        ".includes(t)", arg=expected)
    text: str = shown.inner_text("#samp-status")
    return text


def test_the_page_sends_tables_and_images_to_a_hub(
        start_service: Starter, page: Any,  # noqa: F811
        sample_image: Path, tmp_path: Path):
    require_web_port()
    live = start_service()
    job_id = completed_job(live, sample_image)
    job = f"{live.url}/jobs/{job_id}"
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live.url}/ui/jobs/{job_id}/results")
    # Shown by the script (hidden without it), keyboard reachable.
    assert page.is_visible("#samp-tables")
    assert page.is_visible("#samp-images")
    assert page.locator("#samp-auth").count() == 0  # anonymous: no note
    # No hub yet: the page says what to do.
    page.click("#samp-tables")
    assert status(page, NO_HUB) == NO_HUB
    assert "problem" in page.get_attribute("#samp-status", "class")
    with running_hub(tmp_path) as (dialog, receiver):
        # The user starts a hub and tries again, by keyboard.
        page.focus("#samp-tables")
        page.keyboard.press("Enter")
        text = status(page, "Sent 2 tables to 1 client: qfits-test-viewer")
        page.focus("#samp-images")
        page.keyboard.press("Space")
        text = status(page, "to 1 client: qfits-test-viewer")
        assert text == "Sent 4 images to 1 client: qfits-test-viewer."
        shot(page, "samp-sent")
        # The hub asked once, for this page's origin.
        assert dialog.asked == [("QualityFITS-UWS", live.url)]
        wait_for(lambda: len(receiver.received) == 6, 10, "six messages")
        tables = receiver.of(TABLES)
        assert sorted(p["url"] for p in tables) == [
            f"{job}/results/catalogue", f"{job}/results/summary"]
        for params in tables:
            assert params["table-id"] == params["url"]
            assert params["name"].startswith(job_id)
            parsed = votable.parse(io.BytesIO(download(params["url"])))
            assert parsed.get_first_table().array.size > 0
        images = receiver.of(IMAGES)
        assert sorted(p["url"] for p in images) == [
            f"{job}/parameters/image", f"{job}/results/crmask",
            f"{job}/results/flag", f"{job}/results/weight"]
        for params in images:
            assert params["image-id"] == params["url"]
            body = download(params["url"])
            with fits.open(io.BytesIO(body)) as hdus:
                shapes = [h.data.shape for h in hdus if h.is_image and
                          h.data is not None]
            assert shapes, params["url"]
            if params["url"].endswith("/parameters/image"):
                assert body == sample_image.read_bytes()
        # The page leaves the hub when asked.
        assert "QualityFITS-UWS" in receiver.others()
        page.evaluate("() => qfitsSamp.unregister()")
        wait_for(lambda: "QualityFITS-UWS" not in receiver.others(), 10,
                 "the page unregistered")
        # ... and when it goes away (a new registration, a new consent).
        page.click("#samp-tables")
        status(page, "Sent 2 tables")
        assert len(dialog.asked) == 2
        assert "QualityFITS-UWS" in receiver.others()
        page.goto("about:blank")
        wait_for(lambda: "QualityFITS-UWS" not in receiver.others(), 10,
                 "the page unregistered when left")
    assert errors == []  # no script error in the page
    # Without scripts: no button that cannot work, the rest is there.
    context = page.context.browser.new_context(java_script_enabled=False)
    try:
        bare = context.new_page()
        bare.goto(f"{live.url}/ui/jobs/{job_id}/results")
        assert bare.locator("#samp-tables").count() == 1
        assert not bare.is_visible("#samp-tables")
        assert not bare.is_visible("#samp-images")
        assert bare.is_visible("#products")
    finally:
        context.close()


def test_signed_in_pages_say_the_tools_do_not_get_the_sign_in(
        start_service: Starter, browser: Any,  # noqa: F811
        sample_image: Path, tmp_path: Path):
    require_web_port()
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('first light')}\n")
    live = start_service(auth="basic", auth_user_file=str(users))
    live.http.auth = ("alice", "first light")
    job_id = completed_job(live, sample_image)
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": "alice", "password": "first light"})
    try:
        page = context.new_page()
        page.goto(f"{live.url}/ui/jobs/{job_id}/results")
        note = page.inner_text("#samp-auth")
        assert "the tool gets the files' links, not your sign-in" in note
        # It is so: the links sent are refused without credentials.
        items = page.get_attribute("#samp-tables", "data-samp-items")
        assert f"{live.url}/jobs/{job_id}/results/summary" in items
        with pytest.raises(urllib.error.HTTPError) as refused:
            download(f"{live.url}/jobs/{job_id}/results/summary")
        assert refused.value.code == 401
        # No hub: the message, for images too.
        page.click("#samp-images")
        assert status(page, NO_HUB) == NO_HUB
        shot(page, "samp-no-hub")
    finally:
        context.close()



def samp_buttons(live: LiveService, job_id: str) -> dict[str, Any]:
    """Return id -> items of the SAMP buttons of a results page."""
    answer = live.http.get(f"{live.url}/ui/jobs/{job_id}/results")
    assert answer.status_code == 200, answer.text
    tree = lxml.html.fromstring(answer.text)
    return {b.get("id"): json.loads(b.get("data-samp-items"))
            for b in tree.xpath("//button[@data-samp-mtype]")}


def test_an_image_given_by_url_is_sent_by_its_url(live: LiveService):
    # Pending (never run): no results yet, only the input to show.
    image = "http://archive.example.org/raw/night1/exp042.fits"
    job_id = live.create(IMAGE=image).rsplit("/", 1)[1]
    buttons = samp_buttons(live, job_id)
    assert buttons == {"samp-images": [{
        "url": image, "id": image, "name": f"{job_id}-image",
        "label": "image"}]}
    # Nothing to send: no SAMP block at all.
    bare = live.create().rsplit("/", 1)[1]
    assert samp_buttons(live, bare) == {}
    page_text = live.http.get(f"{live.url}/ui/jobs/{bare}/results").text
    assert 'id="samp"' not in page_text
