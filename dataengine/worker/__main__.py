"""``dataengine-worker [worker options]`` (or ``python -m dataengine.worker``): Celery's own ``worker`` command on
the dataengine app, taking every option ``celery -A dataengine worker`` takes, without the ``celery`` command.

To start one command, ``celery`` imports all it offers: every ``celery.commands`` plugin (Flower's, with tornado)
and ``celery amqp``'s shell (click_repl, prompt_toolkit). A worker uses none of them, yet each pool process
inherits them from the main process. This does what ``celery -A dataengine`` does before it runs ``worker``, and
no more; ``celery -A dataengine worker`` works as before.
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import maybe_patch_concurrency

if TYPE_CHECKING:
    import click
    from celery.bin.base import CLIContext

PROG = "dataengine-worker"


@cache
def worker_command() -> click.Command:
    """Celery's worker command with the ``celery`` command's options that shape a worker, and the app's own."""
    _import_celery_cli()
    from celery.bin.base import CeleryOption
    from celery.bin.worker import worker

    from dataengine.worker.app import app

    def _set(name: str) -> Any:
        return lambda ctx, _param, value: setattr(ctx.obj, name, value)

    worker.params += [
        CeleryOption(["--workdir"], type=Path, is_eager=True, expose_value=False, envvar="CELERY_WORKDIR",
                     callback=lambda _ctx, _param, wd: os.chdir(wd) if wd else None, help_group="Global Options"),
        CeleryOption(["-C", "--no-color"], envvar=["NO_COLOR", "CELERY_NO_COLOR"], is_flag=True, expose_value=False,
                     callback=_set("no_color"), help_group="Global Options"),
        CeleryOption(["-q", "--quiet"], envvar="CELERY_QUIET", is_flag=True, expose_value=False,
                     callback=_set("quiet"), help_group="Global Options"),
        *app.user_options.get("worker", ()),
        *app.user_options.get("preload", ()),  # the worker's callback takes these off (handle_preload_options)
    ]
    return worker


def _import_celery_cli() -> None:
    # Celery's command line colours ``celery inspect``'s output with pygments when it is there (2.3 MB in every
    # process, the pool's too); a worker prints none, and Celery has its own fallback for when it is missing.
    hidden = "pygments" not in sys.modules
    if hidden:
        sys.modules["pygments"] = None  # an import of it raises ImportError
    try:
        import celery.bin.worker  # noqa: F401  and celery.bin.base with it
    finally:
        if hidden:
            del sys.modules["pygments"]


def cli_context() -> CLIContext:
    """What ``celery -A dataengine`` hands its ``worker`` command (the options above may change it)."""
    _import_celery_cli()
    from celery.bin.base import CLIContext

    from dataengine.worker.app import app

    return CLIContext(app=app, no_color=False, workdir=None, quiet=False)


def main() -> None:
    """Run Celery's worker command on the dataengine app with this process's arguments."""
    maybe_patch_concurrency()  # eventlet's or gevent's patches (-P), before anything else opens a socket
    args = sys.argv[1:]
    # Celery re-runs a worker it detaches (--detach) or restarts (SIGHUP, no terminal) from sys.argv, as
    # ``python -m celery <sys.argv[1:]>`` and ``python <sys.argv>``: as the ``celery`` command, which takes these.
    sys.argv = ["-mcelery", "-A", "dataengine", "worker", *args]
    worker_command().main(args, prog_name=PROG, obj=cli_context(), auto_envvar_prefix="CELERY_WORKER")


if __name__ == "__main__":
    main()
