"""``dataengine api`` and ``dataengine api-keys create|list|revoke``."""

from __future__ import annotations

from typing import Annotated

import typer

from dataengine.cli.output import console, fail
from dataengine.infra.errors import DataEngineError

keys_cli = typer.Typer(no_args_is_help=True, help="The HTTP API's keys (stored hashed; a key is shown once).")


def api(
    host: Annotated[str | None, typer.Option(help="Default DATAENGINE_API_HOST (127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Default DATAENGINE_API_PORT (8000)")] = None,
) -> None:
    """Serve the HTTP API (FastAPI under uvicorn): start runs, poll them, cancel and retry them."""
    import uvicorn

    from dataengine.infra.logs import api_log_config
    from dataengine.infra.settings import get_settings
    from dataengine.web.app import NoKeyConfigured, create_app
    from dataengine.web.keys import keys_configured

    s = get_settings()
    if s.die_with_parent:
        from celery.platforms import set_pdeathsig

        set_pdeathsig("SIGKILL")
    if s.environment == "production" and not keys_configured():
        raise fail(str(NoKeyConfigured()))
    uvicorn.run(create_app(), host=host or s.api_host, port=port or s.api_port, log_level=s.log_level.lower(),
                log_config=api_log_config(s.log_level), proxy_headers=True, server_header=False)


@keys_cli.command("create")
def create(name: Annotated[str, typer.Argument(help="What the key is for: vercel-prod, ...")]) -> None:
    """Create a named key and print it, once: only its hash is stored."""
    from dataengine.web.keys import create_key

    try:
        key = create_key(name)
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    console.print(f"API key {name!r} created; it is shown only now:", highlight=False)
    print(key)


@keys_cli.command("list")
def list_() -> None:
    """The named keys: name, first characters, created, last used, revoked."""
    from dataengine.web.keys import list_keys

    for k in list_keys():
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never used"
        revoked = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        print("\t".join([k.name, k.prefix + "…", f"created {k.created_at:%Y-%m-%d %H:%M}", used, revoked]))


@keys_cli.command("revoke")
def revoke(name: str) -> None:
    """Revoke a named key: requests with it get 401 from now on."""
    from dataengine.web.keys import revoke_key

    if not revoke_key(name):
        raise fail(f"no active API key named {name!r}")
    console.print(f"API key {name!r} revoked", highlight=False)
