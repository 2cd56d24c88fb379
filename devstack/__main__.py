"""``python -m devstack {up,down,status,kafka-jars}``; what the Makefile calls."""

from __future__ import annotations

import argparse
import sys

from devstack.errors import DevstackError


def build_parser() -> argparse.ArgumentParser:
    from devstack.stack import DEFAULT_WORKER_CMD

    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="Local Kafka + Redis (+ worker) without Docker. State in .omni/stack/.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Kafka, Redis, topics and the worker (idempotent)")
    up.add_argument(
        "--worker-cmd",
        default=DEFAULT_WORKER_CMD,
        help="command that runs the worker; '' starts no worker (default: %(default)s)",
    )
    up.add_argument(
        "--worker-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the worker's /readyz (default: %(default)s)",
    )
    up.add_argument(
        "--kafka-controller-port",
        type=int,
        default=None,
        help="KRaft controller port (default: Kafka port + 1, i.e. 9093)",
    )
    up.add_argument(
        "--secure",
        action="store_true",
        default=None,
        help="Kafka with SASL_SSL (SCRAM-SHA-512), the StandardAuthorizer and ACLs; "
        "the worker runs as omni-worker (default: OMNI_STACK_SECURE=1)",
    )

    down = sub.add_parser("down", help="stop what `up` started (idempotent)")
    down.add_argument(
        "--wipe",
        action="store_true",
        help="also delete Kafka data, Redis dir and the worker's state under .omni/",
    )
    sub.add_parser("status", help="show what runs; exit 1 if Kafka or Redis is down")
    sub.add_parser("kafka-jars", help="download the pinned Kafka jars into .cache/ (once)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "kafka-jars":
            from devstack.kafka import KAFKA_VERSION, resolve_kafka_jars

            print(f"kafka {KAFKA_VERSION} jars in {resolve_kafka_jars()}")
            return 0

        from devstack import stack

        if args.command == "up":
            stack.up(
                worker_cmd=args.worker_cmd,
                worker_timeout=args.worker_timeout,
                controller_port=args.kafka_controller_port,
                secure=args.secure,
            )
        elif args.command == "down":
            stack.down(wipe=args.wipe)
        elif args.command == "status":
            return 0 if stack.status() else 1
    except DevstackError as exc:
        print(f"devstack {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"devstack {args.command}: interrupted; run `python -m devstack down` to stop "
            "anything already started.",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
