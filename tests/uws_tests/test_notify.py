"""E-mail notification of a job's end, through a real SMTP server.

The service runs in waitress with the local runner and the real worker
(the PBS runner, for a refused submission); the messages go to a real
SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives.
Stopping the service sends what its mailer has queued: after
``live.stop()`` no further message can come, so "exactly one" and
"none" are checked without sleeping.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import pytest
from smtpkit import Inbox, SmtpServer
from uwskit import (
    LiveService,
    error_summary,
    free_port,
    instant,
    job_xml,
    wait_for,
)

Starter = Callable[..., LiveService]

ADDRESS = "astronomer@example.org"
BASE = "http://example.org/qfits"
#: Seconds a test waits for a message (or a logged failure).
MAIL_TIMEOUT = 15.0
ENDED = {"COMPLETED", "ERROR", "ABORTED"}


# -- helpers ------------------------------------------------------------------
def submit(live: LiveService, image: Path, **fields: str) -> tuple[str, str]:
    """Create a job on ``image`` and run it; return (id, URL on loopback).

    The Location may be built from a ``base_url`` on another host: the
    job is reached on the test server itself.
    """
    location = live.run_image(image, **fields)
    job_id = location.rsplit("/", 1)[1]
    return job_id, f"{live.jobs}/{job_id}"


def end_time_text(live: LiveService, url: str) -> str:
    """The job's endTime as the message writes it."""
    ended = instant(job_xml(live, url), "endTime").astimezone(UTC)
    return ended.strftime("%Y-%m-%d %H:%M:%S UTC")


def wait_mails(inbox: Inbox, count: int) -> None:
    """Wait until ``count`` messages arrived (bounded)."""
    wait_for(lambda: len(inbox.received()) >= count, MAIL_TIMEOUT,
             f"{count} e-mail(s) at the SMTP server")


def warnings_of(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    """The mailer's warnings about one job."""
    return [r.getMessage() for r in caplog.records
            if r.name == "uws.notify" and r.levelno == logging.WARNING
            and job_id in r.getMessage()]


def wait_warning(caplog: pytest.LogCaptureFixture, job_id: str) -> str:
    """Wait for the mailer's warning about a job; return it."""
    wait_for(lambda: bool(warnings_of(caplog, job_id)), MAIL_TIMEOUT,
             f"the e-mail warning of job {job_id}")
    return warnings_of(caplog, job_id)[0]


# -- messages sent ------------------------------------------------------------
def test_a_completed_job_is_mailed_once(start_service: Starter,
                                        smtp: SmtpServer,
                                        sample_image: Path):
    live = start_service(smtp_host="127.0.0.1", smtp_port=smtp.port,
                         base_url=BASE)
    job_id, url = submit(live, sample_image, EMAIL=ADDRESS)
    assert live.wait_phase(url, ENDED, timeout=60) == "COMPLETED"
    ended = end_time_text(live, url)
    wait_mails(smtp.inbox, 1)
    live.stop()  # the mailer's queue is drained: nothing more comes
    [mail] = smtp.inbox.received()
    assert mail.sender == "qualityfits-uws@localhost"
    assert mail.recipients == [ADDRESS]
    message = mail.message
    assert message["From"] == "qualityfits-uws@localhost"
    assert message["To"] == ADDRESS
    assert message["Subject"] == f"QualityFITS-UWS job {job_id}: COMPLETED"
    assert message["Date"]
    assert message["Message-ID"]
    assert message.get_content_type() == "text/plain"
    body = mail.body
    assert f"Job:    {job_id}" in body
    assert "Phase:  COMPLETED" in body
    assert f"Ended:  {ended}" in body
    assert "Error" not in body
    assert f"Results: {BASE}/ui/jobs/{job_id}/results" in body


def test_a_failed_job_is_mailed_with_its_error(start_service: Starter,
                                               smtp: SmtpServer,
                                               noise_image: Path):
    # No base URL: the message gives the path of the results page.
    live = start_service(smtp_host="127.0.0.1", smtp_port=smtp.port,
                         smtp_from="qfits@observatory.example")
    job_id, url = submit(live, noise_image, EMAIL=ADDRESS)
    assert live.wait_phase(url, ENDED, timeout=60) == "ERROR"
    _, _, error = error_summary(job_xml(live, url))
    assert "no star usable for the PSF" in error
    ended = end_time_text(live, url)
    wait_mails(smtp.inbox, 1)
    live.stop()
    [mail] = smtp.inbox.received()
    assert mail.sender == "qfits@observatory.example"
    assert mail.message["From"] == "qfits@observatory.example"
    assert mail.message["To"] == ADDRESS
    assert mail.message["Subject"] == f"QualityFITS-UWS job {job_id}: ERROR"
    body = mail.body
    assert "Phase:  ERROR" in body
    assert f"Ended:  {ended}" in body
    assert f"Error:  {error}" in body
    assert f"/ui/jobs/{job_id}/results" in body
    assert "http" not in body  # no host: none is known


def test_a_job_the_runner_refuses_is_mailed(start_service: Starter,
                                            smtp: SmtpServer,
                                            sample_image: Path,
                                            tmp_path: Path):
    # The PBS runner without a qsub: PHASE=RUN itself ends the job.
    empty = tmp_path / "no-batch-commands"
    empty.mkdir()
    live = start_service(runner="pbs", pbs_bin=str(empty),
                         smtp_host="127.0.0.1", smtp_port=smtp.port)
    job_id, url = submit(live, sample_image, EMAIL=ADDRESS)
    assert live.phase(url) == "ERROR"
    _, _, error = error_summary(job_xml(live, url))
    assert error.startswith("the batch system refused the job: qsub not")
    wait_mails(smtp.inbox, 1)
    live.stop()
    [mail] = smtp.inbox.received()
    assert mail.message["Subject"] == f"QualityFITS-UWS job {job_id}: ERROR"
    assert f"Error:  {error}" in mail.body


# -- no message ---------------------------------------------------------------
def test_no_email_parameter_no_message(start_service: Starter,
                                       smtp: SmtpServer,
                                       sample_image: Path):
    live = start_service(smtp_host="127.0.0.1", smtp_port=smtp.port)
    _, url = submit(live, sample_image)
    assert live.wait_phase(url, ENDED, timeout=60) == "COMPLETED"
    live.stop()
    assert smtp.inbox.received() == []


def test_smtp_off_by_default_no_message(start_service: Starter,
                                        smtp: SmtpServer,
                                        sample_image: Path):
    live = start_service()
    assert not live.service.notifier.enabled
    _, url = submit(live, sample_image, EMAIL=ADDRESS)
    assert live.wait_phase(url, ENDED, timeout=60) == "COMPLETED"
    live.stop()
    assert smtp.inbox.received() == []


def test_an_aborted_job_is_not_mailed(start_service: Starter,
                                      smtp: SmtpServer, sample_image: Path):
    live = start_service(smtp_host="127.0.0.1", smtp_port=smtp.port)
    _, url = submit(live, sample_image, EMAIL=ADDRESS)
    r = live.http.post(f"{url}/phase", data={"PHASE": "ABORT"},
                       allow_redirects=False)
    assert r.status_code == 303, r.text
    assert live.wait_phase(url, ENDED, timeout=60) == "ABORTED"
    live.stop()
    assert smtp.inbox.received() == []


# -- SMTP failures never fail a job -------------------------------------------
def test_smtp_server_down(start_service: Starter, sample_image: Path,
                          caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="uws.notify")
    port = free_port()  # nothing listens there
    live = start_service(smtp_host="127.0.0.1", smtp_port=port)
    job_id, url = submit(live, sample_image, EMAIL=ADDRESS)
    assert live.wait_phase(url, ENDED, timeout=60) == "COMPLETED"
    warning = wait_warning(caplog, job_id)
    assert f"through 127.0.0.1:{port}" in warning
    assert "Connection refused" in warning
    assert live.phase(url) == "COMPLETED"


def test_smtp_server_refusing_the_recipient(start_service: Starter,
                                            smtp: SmtpServer,
                                            sample_image: Path,
                                            caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="uws.notify")
    smtp.inbox.refuse = "550 5.1.1 no such mailbox here"
    live = start_service(smtp_host="127.0.0.1", smtp_port=smtp.port)
    job_id, url = submit(live, sample_image, EMAIL=ADDRESS)
    assert live.wait_phase(url, ENDED, timeout=60) == "COMPLETED"
    warning = wait_warning(caplog, job_id)
    assert "550" in warning
    assert "no such mailbox here" in warning
    assert live.phase(url) == "COMPLETED"
    live.stop()
    assert smtp.inbox.received() == []


def test_a_hung_smtp_server_holds_neither_the_poller_nor_requests(
        start_service: Starter, sample_image: Path,
        caplog: pytest.LogCaptureFixture):
    # A server that accepts the connection and never says a word: the
    # mailer waits for its greeting (up to the 60 s timeout) while the
    # next job runs and ends.
    caplog.set_level(logging.WARNING, logger="uws.notify")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(MAIL_TIMEOUT)
    port = int(listener.getsockname()[1])
    live = start_service(smtp_host="127.0.0.1", smtp_port=port,
                         smtp_timeout="60")
    try:
        first, first_url = submit(live, sample_image, EMAIL=ADDRESS)
        assert live.wait_phase(first_url, ENDED, timeout=60) == "COMPLETED"
        conn, _ = listener.accept()  # the mailer is stuck on it now
        with conn:
            second, second_url = submit(live, sample_image, EMAIL=ADDRESS)
            # Well within the SMTP timeout: the poller goes on.
            assert live.wait_phase(second_url, ENDED,
                                   timeout=30) == "COMPLETED"
            listener.close()  # the second message: connection refused
        # The connection closed: the first message fails at once.
        assert "closed" in wait_warning(caplog, first)
        assert "Connection refused" in wait_warning(caplog, second)
    finally:
        listener.close()
