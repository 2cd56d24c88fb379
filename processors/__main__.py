"""``python -m processors worker|topics|settings``: run the worker, create the topics,
or print the effective settings (secrets masked)."""

from __future__ import annotations

import argparse
import logging
import sys

from prometheus_client import start_http_server

from processors.settings import Settings
from processors.topics import ensure_topics
from producers.actions import WeakActionTokenKeyError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m processors")
    parser.add_argument("command", choices=["worker", "topics", "settings"])
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "settings":
        print(settings.model_dump_json(indent=2))  # secrets print as '**********'
        return 0
    if args.command == "worker":
        # Before anything connects: a worker must not sign tokens with a key others know.
        try:
            settings.action_token_keys()
        except WeakActionTokenKeyError as weak:
            print(f"python -m processors worker: refusing to start: {weak}", file=sys.stderr)
            return 2
    created = ensure_topics(settings)
    if args.command == "topics":
        print(f"contract topics ready ({len(created)} created)")
        return 0
    from faust import Worker

    from processors.app import create_app
    from processors.runtime import WorkerRuntime

    app = create_app(settings)
    start_http_server(settings.metrics_port, addr=settings.web_bind)
    # The runtime (health endpoints, Redis writer) is a worker service rather
    # than an app service: Faust starts app services only after table recovery.
    worker = Worker(app, WorkerRuntime(app), loglevel=settings.log_level, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
