"""``accelgen picker``: the endpoint picker a gateway's InferencePool points at.

    accelgen picker --listen 0.0.0.0:9002 --health-port 9003 --routing accelgen \\
        (--pods host:port,... | --pods-dns name.namespace.svc:port) [--refresh-s S]

Bad input is one line and exit 2: an unknown routing policy, no pods, an address that
is not ``host:port`` (argparse's errors), a tier file that does not load, an address it
cannot listen on, or pods none of which answered within ``--startup-timeout-s``.
Top-level imports stay light (argparse only), so ``accelgen --help`` loads no gRPC.
"""

from __future__ import annotations

import argparse
import os

from accelgen.argtypes import non_negative_float, port, positive_float

DEFAULT_REFRESH_S = 0.2
DEFAULT_STARTUP_TIMEOUT_S = 30.0


def _routing(value: str) -> str:
    from accelgen.core.routing import router_names

    if value not in router_names():
        raise argparse.ArgumentTypeError(f"unknown routing policy {value!r}; one of {', '.join(router_names())}")
    return value


def _address(value: str) -> str:
    from accelgen.gateway.pods import format_address, parse_address

    try:
        return format_address(*parse_address(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _pod_list(value: str) -> str:
    from accelgen.gateway.pods import parse_pod_list

    try:
        return ",".join(parse_pod_list(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``accelgen picker``."""
    parser.add_argument(
        "--listen", type=_address, default="0.0.0.0:9002", help="ext_proc gRPC address (default 0.0.0.0:9002)"
    )
    parser.add_argument(
        "--health-port", type=port, default=9003, help="gRPC health port, on --listen's host (default 9003)"
    )
    parser.add_argument("--routing", type=_routing, default="accelgen", help="routing policy (default accelgen)")
    pods = parser.add_mutually_exclusive_group(required=True)
    pods.add_argument("--pods", type=_pod_list, metavar="HOST:PORT,...", help="the pool's pods, a fixed list")
    pods.add_argument(
        "--pods-dns",
        type=_address,
        metavar="NAME:PORT",
        help="a headless Service's DNS name (every address it resolves to is a pod), resolved every refresh",
    )
    parser.add_argument(
        "--refresh-s",
        type=positive_float,
        default=DEFAULT_REFRESH_S,
        help=f"how often every pod's sidecar is read (default {DEFAULT_REFRESH_S})",
    )
    parser.add_argument(
        "--tiers",
        metavar="FILE",
        default=os.environ.get("ACCELGEN_TIERS"),
        help="the pool's tier file (default $ACCELGEN_TIERS, else the sidecar's default tiers)",
    )
    parser.add_argument(
        "--startup-timeout-s",
        type=non_negative_float,
        default=None,
        help=f"exit 2 when no pod answers within this at start (default {DEFAULT_STARTUP_TIMEOUT_S:g} with "
        "--pods; with --pods-dns the picker waits for pods, NOT_SERVING, answering 503; 0: never exit)",
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    """Start the picker and serve until SIGINT/SIGTERM (ConfigError: exit 2)."""
    import asyncio
    import logging
    import sys

    try:
        from accelgen.gateway.picker_run import serve_picker
    except ImportError as err:  # grpcio or Envoy's protos missing
        print(f"accelgen: error: {err.name or err}: the picker needs pip install 'accelgen[gateway]'", file=sys.stderr)
        return 2

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve_picker(args))
