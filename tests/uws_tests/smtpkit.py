"""A real SMTP server for the tests (aiosmtpd on 127.0.0.1).

`smtp` (a fixture, registered in conftest) starts one that keeps every
message it receives: ``smtp.port``, ``smtp.inbox.received()``.
"""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from uwskit import free_port


@dataclass(frozen=True)
class Mail:
    """One message as the SMTP server received it."""

    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def body(self) -> str:
        """Return the plain-text body."""
        return str(self.message.get_content())


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps the messages it receives."""

    mails: list[Mail] = field(default_factory=list)
    #: An SMTP reply to every RCPT TO (e.g. a 550), or None: accept.
    refuse: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any,  # noqa: N802
                          envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        del server, session, rcpt_options
        if self.refuse is not None:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any,  # noqa: N802
                          envelope: Any) -> str:
        del server, session
        message = email.message_from_bytes(envelope.content,
                                           policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.mails.append(Mail(envelope.mail_from,
                                   list(envelope.rcpt_tos), message))
        return "250 OK"

    def received(self) -> list[Mail]:
        """Return the messages received so far."""
        with self.lock:
            return list(self.mails)


@dataclass(frozen=True)
class SmtpServer:
    """A running SMTP server: its port and what it received."""

    port: int
    inbox: Inbox


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1 that keeps every message."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port,
                            server_hostname="localhost")
    controller.start()
    yield SmtpServer(port, inbox)
    controller.stop()
