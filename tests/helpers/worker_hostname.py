"""``[core] hostname_callable`` for the real-stack Celery workers: each worker's own name.

Two Celery workers on one machine share its FQDN, so task instances could not tell them apart. The
harness gives every worker process ``COINSTATS_WORKER_HOSTNAME`` (the name it also passes to
``airflow celery worker --celery-hostname``) and points ``hostname_callable`` here; a task instance's
``hostname`` is then the worker that ran it.
"""

from __future__ import annotations

import os
import socket

__all__ = ["ENV", "hostname"]

#: The environment variable holding the worker's name.
ENV = "COINSTATS_WORKER_HOSTNAME"


def hostname() -> str:
    """The worker's name from :data:`ENV`; the machine's FQDN in any other process."""
    return os.environ.get(ENV) or socket.getfqdn()
