"""The ``accelgen`` command line.

Each subcommand lives in the package that owns it and is imported only when used, so
``accelgen bench sim`` never imports aiohttp or vLLM. A subcommand module exposes
``add_arguments(parser)`` and ``run(args) -> int``.

Exit codes: 0 success, 2 bad input (a file, a field, a flag), 1 anything else.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from accelgen.core.errors import ConfigError

# (command path, module, help)
_COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("bench", "sim"), "accelgen.bench.sim_cmd", "compare scheduling policies in the simulator"),
    (
        ("bench", "capacity"),
        "accelgen.bench.capacity_cmd",
        "each policy's capacity (highest rate meeting every tier's target) and overload goodput",
    ),
    (
        ("bench", "pool"),
        "accelgen.bench.pool_cmd",
        "a pool's capacity per routing x engine policy (the cluster simulator), or --decision-time",
    ),
    (("bench", "planner"), "accelgen.bench.planner_cmd", "time one plan() of each policy"),
    (("bench", "vllm"), "accelgen.bench.vllm_cmd", "compare policies on real vLLM engines"),
    (("bench", "matrix"), "accelgen.bench.matrix_cmd", "bench vllm over model sizes x workloads, one verdict each"),
    (("bench", "overhead"), "accelgen.bench.overhead_cmd", "schedule() time inside vLLM, AccelGen vs stock"),
    (("bench", "proxy"), "accelgen.bench.proxy_cmd", "sidecar overhead against the bare engine"),
    (("bench", "slowloris"), "accelgen.bench.slowloris_cmd", "normal latency while slow clients hold connections"),
    (
        ("bench", "dashboard"),
        "accelgen.bench.dashboard_cmd",
        "the Grafana dashboard's main panels as a PNG, from a real Prometheus",
    ),
    (("bench", "picker"), "accelgen.bench.picker_cmd", "the endpoint picker's time per request over gRPC, N pods"),
    (("model", "tiny"), "accelgen.vllm.tiny_model", "create a tiny random-weight model"),
    (("serve",), "accelgen.server.cli", "serve an engine behind the SLO-aware sidecar"),
    (("picker",), "accelgen.gateway.picker_cmd", "the gateway's endpoint picker (Envoy ext_proc over gRPC)"),
)


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accelgen", description=__doc__.splitlines()[0])
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {
        (): parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    }
    for path, module_name, help_text in _COMMANDS:
        if not _module_available(module_name):
            continue
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in groups:
                sub = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                groups[prefix] = sub.add_subparsers(
                    dest="_".join(prefix) + "_command", required=True, metavar="COMMAND"
                )
        leaf = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        leaf.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(leaf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        code: int = module.run(args)
    except ConfigError as err:
        print(f"accelgen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
