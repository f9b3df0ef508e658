"""E-mail notification when a job ends COMPLETED or ERROR.

A job created with an ``email`` parameter gets one plain-text message
when it ends COMPLETED or ERROR (never ABORTED: the client or the
operator stopped it), if ``qfits.smtp_host`` is set.  `Notifier` queues
the message and one daemon thread (``uws-mailer``) sends it with
`smtplib`: a slow or absent SMTP server never holds the poller or a
request, and never changes a job.  A message that cannot be sent is
logged (a warning with the SMTP error) and dropped; nothing is retried.
"""

from __future__ import annotations

import logging
import queue
import smtplib
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from uws.phases import Phase
from uws.settings import Settings

log = logging.getLogger(__name__)

#: The phases whose arrival is notified.
NOTIFIED: frozenset[Phase] = frozenset({Phase.COMPLETED, Phase.ERROR})
#: Messages waiting to be sent at most; beyond, new ones are dropped.
QUEUE_SIZE = 1000
#: Path of a job's results page, below the service's base URL.
RESULTS_PAGE = "/ui/jobs/{job_id}/results"


@dataclass(frozen=True)
class JobEnd:
    """What the message says of an ended job."""

    job_id: str
    phase: Phase
    end_time: datetime
    #: The errorSummary's message (ERROR only).
    error: str | None = None


def results_link(base_url: str, job_id: str) -> str:
    """Return the URL of the job's results page (a path without base)."""
    return base_url.rstrip("/") + RESULTS_PAGE.format(job_id=job_id)


def build_message(end: JobEnd, to: str, *, sender: str,
                  base_url: str) -> EmailMessage:
    """Write the notification of an ended job.

    Parameters
    ----------
    end : JobEnd
        The job, its final phase, end time and error message.
    to : str
        The job's ``email`` parameter.
    sender : str
        The ``From`` address (``qfits.smtp_from``).
    base_url : str
        The service's public base URL (``qfits.base_url``); empty: the
        message gives the job id and the page's path, without a host.

    Returns
    -------
    email.message.EmailMessage
        A plain-text message with ``From``, ``To``, ``Subject``,
        ``Date`` and ``Message-ID``.
    """
    ended = end.end_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"Your QualityFITS-UWS job {end.job_id} has ended.", "",
             f"Job:    {end.job_id}",
             f"Phase:  {end.phase}",
             f"Ended:  {ended}"]
    if end.error:
        lines.append(f"Error:  {end.error}")
    lines.append("")
    link = results_link(base_url, end.job_id)
    if base_url:
        lines.append(f"Results: {link}")
    else:
        lines += ["Results: on the service that ran the job, at the path",
                  f"    {link}"]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"QualityFITS-UWS job {end.job_id}: {end.phase}"
    message["Date"] = format_datetime(datetime.now(UTC))
    # The sender's domain: make_msgid would otherwise ask the resolver.
    message["Message-ID"] = make_msgid(
        "qfits", domain=sender.rpartition("@")[2] or "localhost")
    message.set_content("\n".join(lines) + "\n")
    return message


def send(message: EmailMessage, settings: Settings) -> None:
    """Send one message to the SMTP server of the settings.

    Raises
    ------
    OSError
        The server cannot be reached, does not answer within
        ``qfits.smtp_timeout``, or refuses (`smtplib.SMTPException`).
    """
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port,
                      timeout=settings.smtp_timeout) as smtp:
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password)
        smtp.send_message(message)


class Notifier:
    """Send job-end messages from one background thread.

    Off (every call a no-op, no thread) when ``qfits.smtp_host`` is
    empty.  Messages queued before `start` wait for it; `close` sends
    what is queued, waiting at most a little over the SMTP timeout.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = bool(settings.smtp_host)
        self._queue: queue.Queue[tuple[JobEnd, str] | None] = queue.Queue(
            QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        """Start the sender thread (when enabled)."""
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="uws-mailer",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Send what is queued, then stop the sender thread."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=self.settings.smtp_timeout)
        except queue.Full:
            log.warning("e-mail notifications still queued at shutdown "
                        "are dropped")
            return
        thread.join(timeout=self.settings.smtp_timeout + 1)
        if thread.is_alive():
            log.warning("the e-mail sender did not finish within %s s: "
                        "the notifications still queued are dropped",
                        self.settings.smtp_timeout + 1)

    def job_ended(self, end: JobEnd, address: str) -> None:
        """Queue the message of a job that ended; never block or raise.

        The caller decides which ends are mailed (`NOTIFIED`).
        """
        if not self.enabled or self._closed:
            return
        try:
            self._queue.put_nowait((end, address))
        except queue.Full:
            log.warning("job %s: e-mail notification dropped: %d messages "
                        "wait already (the SMTP server %s:%d is slow)",
                        end.job_id, QUEUE_SIZE, self.settings.smtp_host,
                        self.settings.smtp_port)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._deliver(*item)

    def _deliver(self, end: JobEnd, address: str) -> None:
        settings = self.settings
        try:
            message = build_message(end, address,
                                    sender=settings.smtp_from,
                                    base_url=settings.base_url)
            send(message, settings)
        except OSError as exc:  # smtplib.SMTPException too
            log.warning("job %s: the e-mail notification could not be sent "
                        "through %s:%d: %s", end.job_id, settings.smtp_host,
                        settings.smtp_port, str(exc) or type(exc).__name__)
        except Exception:
            # A bad header, a bug: the thread must go on for the others.
            log.exception("job %s: the e-mail notification failed",
                          end.job_id)
        else:
            log.info("job %s: %s notified by e-mail", end.job_id, end.phase)
