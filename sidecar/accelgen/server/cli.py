"""``accelgen serve``: the sidecar in front of an engine (vLLM by default, or the sim engine).

Top-level imports stay light (argparse only) so ``accelgen --help`` never loads aiohttp.
"""

from __future__ import annotations

import argparse

from accelgen.argtypes import int_at_least, non_negative_float, port, positive_float, positive_int


def _policy_name(value: str) -> str:
    """A registered core policy (imported only when the flag is given)."""
    from accelgen.core.policies import policy_names

    if value not in policy_names():
        raise argparse.ArgumentTypeError(f"unknown policy {value!r}; one of {', '.join(policy_names())}")
    return value


def _routing_name(value: str) -> str:
    """A registered routing policy (imported only when the flag is given)."""
    from accelgen.core.routing import router_names

    if value not in router_names():
        raise argparse.ArgumentTypeError(f"unknown routing policy {value!r}; one of {', '.join(router_names())}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``accelgen serve``."""
    _sidecar_arguments(parser)
    _engine_arguments(parser)
    _limit_arguments(parser)
    _connection_arguments(parser)
    _pool_arguments(parser)


def _pool_arguments(parser: argparse.ArgumentParser) -> None:
    """A pool on this machine: N replicas behind one port (accelgen.gateway.pool)."""
    parser.add_argument(
        "--replicas",
        type=int_at_least(1),
        default=1,
        help="replicas (sidecar + engine each) behind one port; N > 1 runs sim engines unless --engine vllm",
    )
    parser.add_argument(
        "--routing", type=_routing_name, default="accelgen", help="how the pool places requests (default accelgen)"
    )


def _sidecar_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the sidecar listens, its tiers and its tenants' keys."""
    parser.add_argument("--host", default="0.0.0.0", help="interface to listen on (default all)")
    parser.add_argument("--port", type=port, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--tiers",
        metavar="FILE",
        help="tier configuration YAML (reloaded on SIGHUP or change; default: interactive/standard/batch)",
    )
    parser.add_argument(
        "--keys",
        metavar="FILE",
        help="tenants' API key hashes (YAML); without it no key is required",
    )


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Which engine: a running one, or one to start (vLLM or sim) and how; the pool label."""
    parser.add_argument("--engine-url", metavar="URL", help="a running vLLM OpenAI server")
    parser.add_argument(
        "--engine",
        choices=("sim", "vllm"),
        help="engine to start when no --engine-url: vllm (default, AccelGen's scheduler) or sim (simulated)",
    )
    parser.add_argument("--pool", metavar="NAME", help="pool label on every metric")
    parser.add_argument(
        "--model",
        metavar="DIR",
        help="model directory for the embedded vLLM (default: the tiny random-weight model, created once)",
    )
    parser.add_argument(
        "--engine-stats",
        metavar="FILE",
        help="AccelGen's in-engine stats file (the engine's ACCELGEN_STATS_FILE, e.g. on a "
        "shared volume); its preemptions hold releases back, its token budget is exported. "
        "Set for the embedded vLLM; the sim engine writes it (to a temporary file without this flag).",
    )
    parser.add_argument(
        "--vllm-arg",
        action="append",
        metavar="ARG",
        help="extra argument for the embedded vLLM server (repeat; e.g. --vllm-arg=--max-num-seqs=64)",
    )
    parser.add_argument(
        "--latency-model",
        metavar="NAME",
        help="latency model of the sim engine and of admission's speed estimate (e.g. h100-llama-2-7b)",
    )


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    """How much the sidecar releases and queues, the sim engine's size and pace, timeouts, logging."""
    parser.add_argument(
        "--max-running",
        type=positive_int,
        default=64,
        help="requests released to the engine at once (default 64)",
    )
    parser.add_argument("--max-queue", type=positive_int, default=256, help="queued requests per tier")
    parser.add_argument("--sim-max-num-seqs", type=positive_int, default=32)
    parser.add_argument(
        "--sim-policy",
        type=_policy_name,
        default="accelgen",
        help="the core policy the sim engine plans with (default accelgen)",
    )
    parser.add_argument(
        "--sim-time-scale",
        type=non_negative_float,
        default=1.0,
        help="slow the sim engine's iterations down by this factor",
    )
    parser.add_argument(
        "--token-timeout-s",
        type=positive_float,
        default=30.0,
        help="longest wait for the engine's next token (default 30)",
    )
    parser.add_argument(
        "--connect-timeout-s",
        type=positive_float,
        default=30.0,
        help="longest wait to open a connection to the engine (default 30; a dead engine on "
        "localhost refuses at once, so this only bounds a stalled node or a full accept queue)",
    )
    parser.add_argument("--log-level", default="INFO")


def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    """What a client's connection may cost: its phases' timeouts, how many; /stats without a key."""
    parser.add_argument(
        "--header-timeout-s",
        type=positive_float,
        default=10.0,
        help="a request's line and headers must arrive within this (default 10; else 408 and closed)",
    )
    parser.add_argument(
        "--body-timeout-s",
        type=positive_float,
        default=30.0,
        help="a request's body must arrive within this (default 30; else 408 and closed)",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=positive_float,
        default=75.0,
        help="an idle keep-alive connection is closed after this (default 75)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=4096,
        help="client connections open at once; more get 503 and are closed (default 4096)",
    )
    parser.add_argument(
        "--open-stats",
        action="store_true",
        help="answer GET /stats without a key even when --keys is given (the operator reads it)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the configuration (ConfigError → exit 2), start the engine and serve."""
    import asyncio
    import logging

    from accelgen.server.serve import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.replicas > 1:
        from accelgen.gateway.pool import serve_pool

        return asyncio.run(serve_pool(args))
    try:
        import uvloop  # faster event loop; optional
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))
