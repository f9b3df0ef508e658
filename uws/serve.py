"""Serve the application with gunicorn from ``pserve``.

``[server:main] use = call:uws.serve:gunicorn`` (docs/service.md,
"Serving"): one gunicorn worker process with a pool of threads (the
``gthread`` worker), the alternative to waitress measured by
``benchmarks/bench_uws.py --fair --server gunicorn``
(``benchmarks/README.md``, "Fair service under load").

``pserve`` builds the application before it calls the server, in the
process that becomes gunicorn's arbiter; the service's threads (poller,
reaper, mailer) and database connections must not live there, and do
not survive a fork.  So the server closes that first service and the
worker builds the application again from the same ini when it starts
(a worker that gunicorn restarts does the same and adopts the jobs, as
a restarted service does).  One worker only: the WAIT wake-ups, the
poller and the local runner's slots live in its process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gunicorn.app.pasterapp import get_wsgi_app, has_logging_config
from gunicorn.app.wsgiapp import WSGIApplication

log = logging.getLogger(__name__)

#: gunicorn settings the runner fixes (the rest may be set in the ini).
FIXED = {"workers": 1, "worker_class": "gthread"}


def gunicorn(global_conf: dict[str, Any],
             **local_conf: Any) -> Callable[[Any], None]:
    """Paste server factory: gunicorn, one ``gthread`` worker.

    ``local_conf`` holds gunicorn settings (``host``, ``port``,
    ``threads``, ``worker_connections``, ``timeout``...); ``workers``
    and ``worker_class`` other than the fixed ones are refused.
    """
    for key, value in FIXED.items():
        given = local_conf.pop(key, None)
        if given is not None and str(given) != str(value):
            msg = (f"qualityfits-uws: cannot start: [server:main] {key} = "
                   f"{given}: the service runs in one gunicorn process "
                   f"({key} = {value}; docs/service.md, 'Serving')")
            raise SystemExit(msg)
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
