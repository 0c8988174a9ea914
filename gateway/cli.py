"""The ``rtvoice`` command: serve, calls, drain, transcript; demo and simulate when the simulator is
installed.

Argument parsing and output only; each command's work lives in its own module.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

import orjson

from storage.settings import ConfigError, Settings, load_settings

# Development commands (demo, simulate) come from this entry-point group (pyproject.toml), so the
# gateway never imports the simulator: each entry is ``add_parser(subparsers) -> ArgumentParser``,
# and the parser's ``func(args, settings)`` runs the command.
COMMANDS_GROUP = "rtvoice.commands"


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    from gateway.serve import serve

    # libuv's loop: about half the CPU per relayed media frame of asyncio's own (README
    # "Performance").
    return uvloop.run(serve(settings, host=args.host, port=args.port))


def _connect_ray(address: str, namespace: str) -> bool:
    import ray

    try:
        # No worker logs relayed: Ray prints the cluster's own (the raylet's "N worker
        # processes have been started" warning, for one) on a driver's stdout, which here
        # carries the command's answer (`rtvoice calls --json`).
        ray.init(
            address=address,
            namespace=namespace,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    except ConnectionError:
        print(
            f"rtvoice: no Ray cluster at {address!r} (start one, or run `rtvoice demo "
            "--keep-running` in another terminal, or pass --address)",
            file=sys.stderr,
        )
        return False
    return True


def _calls(args: argparse.Namespace, settings: Settings) -> int:
    from actors.cluster import call_actor_nodes, list_call_actors
    from gateway.calls_view import build_view, render

    address = args.address or settings.actors.ray_address or "auto"
    namespace = settings.actors.ray_namespace
    if not _connect_ray(address, namespace):
        return 1
    actors = list_call_actors(namespace)
    try:
        nodes = call_actor_nodes(namespace)
    except Exception as exc:  # no dashboard: each actor's own view of its node
        print(f"rtvoice: Ray's state API unavailable ({type(exc).__name__})", file=sys.stderr)
        nodes = {}
    call_ids = [str(a["call_id"]) for a in actors if a.get("state") not in (None, "spare")]
    replicas = asyncio.run(_media_replicas(settings, call_ids))
    view = build_view(actors, nodes, replicas, time.time())
    if args.json:
        sys.stdout.write(orjson.dumps(view.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(view))
    return 0


async def _media_replicas(settings: Settings, call_ids: list[str]) -> dict[str, str | None]:
    """The replica holding each call's media, from its affinity record ({} without Redis)."""
    from storage.errors import StorageError
    from storage.redis_manager import AsyncAzureRedisManager

    redis = settings.storage.redis
    if not (redis.url or redis.host):
        return {}
    found: dict[str, str | None] = {}
    async with AsyncAzureRedisManager.from_settings(settings.storage) as manager:
        for call_id in call_ids:
            try:
                record = await manager.get_affinity(call_id)
            except StorageError:
                return found
            found[call_id] = record.media_replica if record else None
    return found


def _drain(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.drain import drain_target

    if args.node and not _connect_ray(
        args.address or settings.actors.ray_address or "auto", settings.actors.ray_namespace
    ):
        return 1
    return asyncio.run(
        drain_target(
            settings,
            replica=args.replica,
            node=args.node,
            timeout_s=args.timeout,
            interval_s=args.interval,
            undo=args.undo,
            out=print,
        )
    )


def _transcript(args: argparse.Namespace, settings: Settings) -> int:
    from storage.archive import open_archive

    async def fetch() -> dict[str, object] | None:
        async with open_archive(settings.storage) as archive:
            return await archive.get_transcript(args.call_id)

    doc = asyncio.run(fetch())
    if doc is None:
        print(f"no archived transcript for call {args.call_id}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else a usage error naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtvoice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a gateway replica (configuration from RTVOICE_*)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=bounded_int(1, 65535), default=8000)
    serve.set_defaults(func=_serve)

    calls = sub.add_parser("calls", help="list live call actors")
    calls.add_argument("--address", default=None, help="Ray address (default: auto)")
    calls.set_defaults(func=_calls)

    calls.add_argument("--json", action="store_true", help="print the view as JSON")

    drain = sub.add_parser(
        "drain",
        help="stop a gateway replica or a Ray node from taking new calls; wait for its calls",
    )
    which = drain.add_mutually_exclusive_group(required=True)
    which.add_argument("--replica", help="a gateway replica id (RTVOICE_REPLICA_ID)")
    which.add_argument("--node", help="a Ray node id (hex, as `rtvoice calls` shows it)")
    drain.add_argument("--address", default=None, help="Ray address for --node (default: auto)")
    drain.add_argument(
        "--timeout", type=bounded_int(0, 86_400), default=3600, help="seconds to wait (3600)"
    )
    drain.add_argument("--interval", type=bounded_int(1, 600), default=5, help="progress every N s")
    drain.add_argument("--undo", action="store_true", help="take new calls again (replica)")
    drain.set_defaults(func=_drain)

    transcript = sub.add_parser("transcript", help="print an archived transcript as JSON")
    transcript.add_argument("call_id")
    transcript.set_defaults(func=_transcript)

    for command in sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name):
        command.load()(sub)
    return parser


# Libraries that log request URLs at INFO: callback and webhook URLs carry secrets.
URL_LOGGERS = ("httpx", "azure.core.pipeline.policies.http_logging_policy")


def configure_logging(level: int = logging.WARNING) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"rtvoice: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        # Before Ray's exit handlers run, so none of them can end the process with output
        # still buffered. (It did not cure the empty `rtvoice calls --json` seen twice in CI;
        # tests/test_cluster_autoscaling.py says what is known of that.)
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
