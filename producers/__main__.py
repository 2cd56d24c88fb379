"""``python -m producers publish --file events.jsonl``: publish with the contract package alone.

The same command as the worker install's ``omni publish`` (same report, same exit
codes: 1 if any line was rejected, 2 for a missing file), without its progress bar
(rich and typer are the worker's). Settings come from ``OMNI_*`` variables
(:meth:`producers.config.ProducerSettings.from_env`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from producers.config import ProducerSettings
from producers.publish import no_such_file, publish_lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m producers", description="Publish touchpoint events (the contract SDK)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser(
        "publish", help="publish each line of a JSON Lines file as one event"
    )
    publish.add_argument("--file", "-f", required=True, help="JSON Lines file, or - for stdin")
    args = parser.parse_args(argv)
    try:
        settings = ProducerSettings.from_env()
    except ValueError as bad:
        print(bad, file=sys.stderr)
        return 2
    if args.file == "-":
        report = publish_lines(sys.stdin.buffer, settings)
    else:
        path = Path(args.file)
        if not path.is_file():
            print(no_such_file(args.file), file=sys.stderr)
            return 2
        with path.open("rb") as lines:
            report = publish_lines(lines, settings)
    for line in report.rejected_lines():
        print(line, file=sys.stderr)
    print(report.summary(), file=sys.stderr)
    return 1 if report.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
