"""The Pyramid application factory (``paste.app_factory`` ``main``).

`main` builds the one `uws.settings.Settings` from the ``[app:main]``
keys, the store, the runner and the job service, registers the routes
of the UWS resources and VOSI, recovers the jobs a previous process
left active, and starts the poller and reaper threads.
"""

from __future__ import annotations

import logging
import secrets
import sys
from typing import Any

from pyramid.config import Configurator

from pbs_bridge.runner import runner_class
from uws.auth import make_policy
from uws.memory import return_large_blocks
from uws.runs_views import RUN_ROUTES
from uws.security import TWEEN_OVER
from uws.service import JobService
from uws.settings import Settings, SettingsError
from uws.store import JobStore, SchemaError
from uws.vo_views import VO_ROUTES
from uws.web import STATIC, WEB_ROUTES

log = logging.getLogger(__name__)

#: Route name -> pattern.  The job list is the service's UWS endpoint;
#: ``/`` is the web page's submit form (`uws.web`, with its own routes).
ROUTES = (
    ("home", "/"),
    ("availability", "/availability"),
    ("capabilities", "/capabilities"),
    ("jobs", "/jobs"),
    ("job", "/jobs/{job_id}"),
    ("job_phase", "/jobs/{job_id}/phase"),
    ("job_executionduration", "/jobs/{job_id}/executionduration"),
    ("job_destruction", "/jobs/{job_id}/destruction"),
    ("job_error", "/jobs/{job_id}/error"),
    ("job_results", "/jobs/{job_id}/results"),
    ("job_result", "/jobs/{job_id}/results/{result_id}"),
    ("job_parameters", "/jobs/{job_id}/parameters"),
    ("job_parameter", "/jobs/{job_id}/parameters/{name}"),
    ("job_attribute", "/jobs/{job_id}/{name}"),
)


def build_service(settings: Settings) -> JobService:
    """Create the store, the runner and the job service (not started).

    The runner is the class ``qfits.runner`` names, built with its own
    settings (`pbs_bridge.runner`).
    """
    store = JobStore(settings.database_url)
    runner = runner_class(settings.runner)(settings.runner_settings)
    return JobService(settings, store, runner)


def make_app(settings: Settings, service: JobService | None = None) -> Any:
    """Return the WSGI application for these settings.

    The service's threads are started here; ``app.registry.job_service``
    gives access to it (``close()`` it to stop them).
    """
    if service is None:
        service = build_service(settings)
    config = Configurator(settings={})
    config.registry.job_service = service
    config.registry.authenticator = make_policy(settings.auth,
                                                settings.auth_settings)
    config.registry.csrf_secret = (settings.csrf_secret.encode()
                                   or secrets.token_bytes(32))
    config.add_tween("uws.security.origin_tween_factory",
                     over=TWEEN_OVER)
    config.add_tween("uws.forms.conditions_tween_factory",
                     over=TWEEN_OVER)
    for name, pattern in (*ROUTES, *WEB_ROUTES, *VO_ROUTES,
                          *RUN_ROUTES):
        config.add_route(name, pattern)
    config.add_static_view("static", str(STATIC), cache_max_age=3600)
    config.scan("uws.views")
    config.scan("uws.web")
    config.scan("uws.vo_views")
    config.scan("uws.runs_views")
    app = config.make_wsgi_app()
    service.recover()
    service.start()
    log.info("QualityFITS-UWS ready: %s jobs, runner %s, job folder %s",
             service.store.count(), service.runner.name, settings.job_dir)
    return app


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    """Paste entry point: ``[app:main] use = egg:qualityfits-uws``.

    Bad settings and a database whose schema is behind stop the
    process with one line saying what to do, not a traceback.
    """
    del global_config
    try:
        made = Settings.from_ini(settings)
        if made.switch_interval > 0:
            # The served process only (tests build apps with make_app).
            sys.setswitchinterval(made.switch_interval)
        return_large_blocks()  # the served process only, likewise
        return make_app(made)
    except (SettingsError, SchemaError) as exc:
        raise SystemExit(f"qualityfits-uws: cannot start: {exc}") from None
