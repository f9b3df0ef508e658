"""Serve the application with gunicorn or granian from ``pserve``.

``[server:main] use = call:uws.serve:gunicorn`` (docs/service.md,
"Serving"): one gunicorn worker process with a pool of threads (the
``gthread`` worker); ``use = call:uws.serve:granian``: one granian
worker process (HTTP in Rust, the application on a pool of Python
threads).  The alternatives to waitress measured by
``benchmarks/bench_uws.py --fair --server gunicorn|granian``
(``benchmarks/README.md``, "Fair service under load").

``pserve`` builds the application before it calls the server, in the
process that becomes the server's parent (gunicorn's arbiter, granian's
main process); the service's threads (poller, reaper, mailer) and
database connections must not live there, and do not survive a fork.
So the server closes that first service and the worker builds the
application again from the same ini when it starts (a worker that the
server restarts does the same and adopts the jobs, as a restarted
service does).  One worker only: the WAIT wake-ups, the poller and the
local runner's slots live in its process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server import Server as GranianServer
from gunicorn.app.pasterapp import get_wsgi_app, has_logging_config
from gunicorn.app.wsgiapp import WSGIApplication
from pyramid.settings import asbool

log = logging.getLogger(__name__)

#: gunicorn settings the runner fixes (the rest may be set in the ini).
FIXED = {"workers": 1, "worker_class": "gthread"}


def _refuse_other(fixed: dict[str, Any], local_conf: dict[str, Any],
                  what: str) -> None:
    """Take the ``fixed`` keys out of ``local_conf``; stop on another value.

    ``what`` says how the service runs ("one gunicorn process").
    """
    for key, value in fixed.items():
        given = local_conf.pop(key, None)
        if given is not None and str(given) != str(value):
            msg = (f"qualityfits-uws: cannot start: [server:main] {key} = "
                   f"{given}: the service runs in {what} "
                   f"({key} = {value}; docs/service.md, 'Serving')")
            raise SystemExit(msg)


def gunicorn(global_conf: dict[str, Any],
             **local_conf: Any) -> Callable[[Any], None]:
    """Paste server factory: gunicorn, one ``gthread`` worker.

    ``local_conf`` holds gunicorn settings (``host``, ``port``,
    ``threads``, ``worker_connections``, ``timeout``...); ``workers``
    and ``worker_class`` other than the fixed ones are refused.
    """
    _refuse_other(FIXED, local_conf, "one gunicorn process")
    config_file = global_conf["__file__"]
    host = local_conf.pop("host", "127.0.0.1")
    port = local_conf.pop("port", "6543")
    local_conf["bind"] = f"{host}:{port}"
    defaults = {k: v for k, v in global_conf.items()
                if k not in {"__file__", "here"}}

    class Server(WSGIApplication):
        def load_config(self) -> None:
            self.cfg.set("default_proc_name", config_file)
            if has_logging_config(config_file):
                self.cfg.set("logconfig", config_file)
            if "control_socket_disable" in self.cfg.settings:
                # No control socket (gunicorn 27 opens one per user in
                # $HOME, shared by every instance) unless asked for.
                self.cfg.set("control_socket_disable", True)  # noqa: FBT003
            for key, value in {**local_conf, **FIXED}.items():
                if value is not None:
                    self.cfg.set(key.lower(), value)

        def load(self) -> Any:
            # In the worker: a service of its own.
            return get_wsgi_app(config_file, defaults=defaults)

    def serve(app: Any) -> None:
        # The arbiter's copy: its threads stop, its connections close.
        app.registry.job_service.close()
        Server().run()

    return serve


#: granian settings the runner fixes (the rest may be set in the ini).
GRANIAN_FIXED = {"workers": 1, "interface": "wsgi"}

#: ``[server:main]`` keys of the granian runner and how to read them
#: (granian's own names, ``blocking_threads`` as ``threads`` too).
GRANIAN_KEYS: dict[str, Callable[[str], Any]] = {
    "blocking_threads": int, "blocking_threads_idle_timeout": int,
    "backpressure": int, "backlog": int, "runtime_threads": int,
    "http": HTTPModes, "log_level": LogLevels, "log_access": asbool,
    "url_path_prefix": str, "respawn_failed_workers": asbool,
}


#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def _end_with_parent(parent: int, interval: float = 1.0) -> None:
    """Stop this worker when its parent is gone (its ppid changes).

    granian's worker does not watch its parent: after a ``kill -9`` of
    the main process it would go on serving, and a restarted service
    would run beside it on the same database.  SIGTERM ends it as
    granian ends its workers (requests in progress finish).  On Linux
    ``PR_SET_PDEATHSIG`` sends it at once; this check, every
    ``interval`` s, is for the other systems.
    """
    while os.getppid() == parent:
        time.sleep(interval)
    log.warning("the server's main process %d is gone: this worker "
                "(%d) stops", parent, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def _paste_app(config_file: str, defaults: dict[str, str]) -> Any:
    """Build the WSGI application from the ini (in granian's worker)."""
    if sys.platform == "linux":
        # At once on Linux: SIGTERM when the parent dies.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    threading.Thread(target=_end_with_parent, args=(os.getppid(),),
                     name="parent-watch", daemon=True).start()
    return get_wsgi_app(config_file, defaults=defaults)


def granian(global_conf: dict[str, Any],
            **local_conf: Any) -> Callable[[Any], None]:
    """Paste server factory: granian, one worker process.

    granian's HTTP handling runs in Rust threads; each request calls
    the application on one of ``threads`` (granian's
    ``blocking_threads``, default 128) Python threads, which must
    outnumber ``qfits.wait_clients``: a blocked WAIT holds one.
    ``local_conf`` holds ``host``, ``port``, ``threads`` and the
    granian settings of ``GRANIAN_KEYS``; ``workers`` other than 1 and
    unknown keys are refused.
    """
    _refuse_other(GRANIAN_FIXED, local_conf, "one granian worker")
    config_file = global_conf["__file__"]
    host = local_conf.pop("host", "127.0.0.1")
    port = int(local_conf.pop("port", "6543"))
    threads = local_conf.pop("threads", None)
    if threads is not None:
        local_conf.setdefault("blocking_threads", threads)
    # A worker that dies is started again (and adopts the jobs), as
    # gunicorn does, instead of granian's default: the server stops.
    options: dict[str, Any] = {"blocking_threads": 128,
                               "respawn_failed_workers": True}
    for key, value in local_conf.items():
        if key not in GRANIAN_KEYS:
            msg = (f"qualityfits-uws: cannot start: [server:main] {key}: "
                   f"not a granian setting of uws.serve (known: host, "
                   f"port, threads, {', '.join(sorted(GRANIAN_KEYS))})")
            raise SystemExit(msg)
        try:
            options[key] = GRANIAN_KEYS[key](value)
        except ValueError:
            msg = (f"qualityfits-uws: cannot start: [server:main] {key} = "
                   f"{value}: not a valid value")
            raise SystemExit(msg) from None
    # granian's backpressure caps the open connections (keep-alive ones
    # included), not the requests in the application: its default
    # (backlog, 1024) leaves room for the WAITs and the other clients.
    defaults = {k: v for k, v in global_conf.items()
                if k not in {"__file__", "here"}}

    def serve(app: Any) -> None:
        # The parent's copy: its threads stop, its connections close.
        app.registry.job_service.close()
        server = GranianServer(
            config_file, address=host, port=port,
            interface=Interfaces.WSGI, workers=1, **options)
        server.serve(target_loader=partial(_paste_app, defaults=defaults))

    return serve
