"""``milter review``: the quarantine web UI (``milter.review``) on uvicorn.

It listens where ``review.listen`` says, over HTTPS when ``review.tls`` names a
certificate and key, and under ``review.base_path`` behind a reverse proxy.
"""

from __future__ import annotations

import argparse
from typing import Any

from milter.commands import CommandError, load_config


def register(sub: Any) -> None:
    p = sub.add_parser("review", help="serve the quarantine review web UI")
    p.set_defaults(func=review)


def review(args: argparse.Namespace) -> int:
    import uvicorn

    from milter.review.app import create_app
    from milter.review.settings import settings_of

    config = load_config(args)
    settings = settings_of(config)
    app = create_app(config, settings=settings)
    host, port = settings.listen
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=settings.tls_cert if settings.tls else None,
            ssl_keyfile=settings.tls_key if settings.tls else None,
            proxy_headers=False,  # the client address feeds the login throttle
            server_header=False,
            date_header=True,
            log_level=config.log_level.lower(),
            access_log=True,
            lifespan="on",
        )
    )
    try:
        server.run()
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0
