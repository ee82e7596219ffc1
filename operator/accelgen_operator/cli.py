"""``accelgen-operator``: run the operator, or benchmark it against the emulated API.

accelgen-operator run [--namespace NS ...] [--standalone | --peering NAME]
accelgen-operator bench --pools 100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf

from accelgen.argtypes import positive_float, positive_int
from accelgen_operator.handlers import OperatorConfig, build_registry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accelgen-operator", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator (in a cluster or against a kubeconfig)")
    run.add_argument("--namespace", "-n", action="append", default=[],
                     help="watch this namespace (repeatable, globs); default: all")  # fmt: skip
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--standalone", action="store_true",
                      help="no peering: only for a single replica you are sure of")  # fmt: skip
    mode.add_argument("--peering", default=None,
                      help="kopf peering object name (default: kopf's default)")  # fmt: skip
    run.add_argument("--priority", type=int, default=0,
                     help="peering priority: a higher one pauses the others")  # fmt: skip
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                     help="kopf's liveness endpoint (empty to disable)")  # fmt: skip
    run.add_argument("--server", default=None,
                     help="API URL without auth (e.g. `kubectl proxy`); default: in-cluster or kubeconfig")  # fmt: skip
    run.add_argument("--stats-interval", type=positive_float, default=15.0, help="seconds between /stats reads")
    run.add_argument("--stats-timeout", type=positive_float, default=2.0, help="seconds to wait for one pod")
    run.add_argument("--default-engine-image", default=os.environ.get("ACCELGEN_DEFAULT_ENGINE_IMAGE") or None,
                     help="image of pools without spec.engine.image (env ACCELGEN_DEFAULT_ENGINE_IMAGE)")  # fmt: skip
    run.add_argument("--default-sidecar-image", default=os.environ.get("ACCELGEN_DEFAULT_SIDECAR_IMAGE") or None,
                     help="image of pools without spec.sidecar.image (env ACCELGEN_DEFAULT_SIDECAR_IMAGE)")  # fmt: skip
    run.add_argument("--verbose", "-v", action="store_true")
    bench = sub.add_parser("bench", help="reconcile N pools against an in-memory API and measure")
    bench.add_argument("--pools", type=positive_int, default=100)
    bench.add_argument("--stats-interval", type=positive_float, default=2.0)
    bench.add_argument("--json", dest="json_path", default=None, help="also write the result here")
    return parser


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    """The ``run`` command's flags as an OperatorConfig (an empty image flag: no default)."""
    return OperatorConfig(
        api_url=args.server,
        stats_interval_s=args.stats_interval,
        stats_timeout_s=args.stats_timeout,
        default_engine_image=args.default_engine_image or None,
        default_sidecar_image=args.default_sidecar_image or None,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``accelgen-operator`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        logging.basicConfig(level=logging.ERROR)
        from accelgen_operator.bench import main as bench_main

        return bench_main(num_pools=args.pools, stats_interval_s=args.stats_interval, json_path=args.json_path)
    kopf.configure(verbose=args.verbose)
    cfg = config_from_args(args)
    asyncio.run(
        kopf.operator(
            registry=build_registry(cfg),
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.standalone,
            peering_name=args.peering,
            priority=args.priority,
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
