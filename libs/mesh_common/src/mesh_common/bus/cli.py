"""``mesh-bus``: inspect and replay dead-lettered messages on RabbitMQ.

    mesh-bus dlq list <queue> [--limit N]      print DLQ messages as JSON lines (not removed)
    mesh-bus dlq replay <queue> [--limit N]    move DLQ messages back to <queue>
    mesh-bus dlq count <queue>                 number of messages in <queue>.dlq

``<queue>`` is a handler queue (``<service>.<handler>``; ``.dlq`` may be appended). The broker
URL comes from ``AMQP_URL`` (never from a command-line flag, so it stays out of shell
history and process listings); ``MESH_BUS_PREFIX`` or ``--prefix`` selects a namespace. The
same operations are available to services as :func:`mesh_common.bus.dlq_list` /
:func:`mesh_common.bus.dlq_replay`. This module must not print the URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import orjson

from mesh_common.bus.core import dlq_list, dlq_replay
from mesh_common.bus.settings import BusSettings
from mesh_common.bus.topology import Topology, main_queue_of


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh-bus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default=None, help="namespace prefix (env MESH_BUS_PREFIX)")
    groups = parser.add_subparsers(dest="group", required=True)
    dlq = groups.add_parser("dlq", help="dead-letter queue tools")
    actions = dlq.add_subparsers(dest="action", required=True)
    for name, help_text in (
        ("list", "print DLQ messages as JSON lines without removing them"),
        ("replay", "move DLQ messages back to their queue"),
        ("count", "print the number of messages in the DLQ"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("queue", help="handler queue, e.g. mailbox_invites.send_invite")
        if name != "count":
            action.add_argument("--limit", type=int, default=None, help="at most N messages")
    return parser


async def run(argv: Sequence[str], env: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    """Execute one command; returns the process exit code."""
    args = _parser().parse_args(list(argv))
    url = env.get("AMQP_URL")
    if not url:
        print("mesh-bus: set AMQP_URL (e.g. amqp://user:pass@host:5672/vhost)", file=sys.stderr)
        return 2
    prefix = args.prefix if args.prefix is not None else env.get("MESH_BUS_PREFIX", "")
    from mesh_common.bus.amqp import AmqpTransport

    settings = BusSettings(service="mesh-bus", amqp_url=url, prefix=prefix, publish_timeout=30)
    topology = Topology(prefix)
    transport = AmqpTransport(settings)
    await transport.connect()
    try:
        if args.action == "list":
            limit = args.limit if args.limit is not None else 1000
            for record in await dlq_list(transport, topology, args.queue, limit=limit):
                out.write(orjson.dumps(record, default=str).decode() + "\n")
        elif args.action == "replay":
            moved = await dlq_replay(transport, topology, args.queue, limit=args.limit)
            out.write(f"replayed {moved} message(s) to {main_queue_of(args.queue)}\n")
        else:
            name = main_queue_of(args.queue)
            if prefix and not name.startswith(prefix):
                name = prefix + name
            out.write(f"{await transport.message_count(name + '.dlq')}\n")
    finally:
        await transport.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return asyncio.run(run(sys.argv[1:] if argv is None else argv, os.environ))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, no traceback (and never the URL) for operators
        print(f"mesh-bus: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
