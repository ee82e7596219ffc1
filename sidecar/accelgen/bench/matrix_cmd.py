"""``accelgen bench matrix``: ``accelgen bench vllm`` over model sizes × workloads, one verdict each.

Every cell is one ``accelgen bench vllm WORKLOAD --model M --judge --calibrated ...`` run
(the engine measured first, the workload sized to it, stock vLLM and AccelGen side by
side, vLLM's benchmark client as the outside judge, the simulator on the engine's fit),
judged by :mod:`accelgen.bench.goals`. Models are random-weight Llamas made here
(:func:`~accelgen.vllm.tiny_model.build_tiny_model`), named by their compute per token
relative to the default tiny one::

    tiny   hidden 256,  2 layers    (1x the weights a token multiplies)
    x4     hidden 512,  2 layers    (4x)
    x16    hidden 1024, 2 layers    (16x)

Cells run one after another (one engine at a time on the machine); a cell that fails
is reported with its error and the others still run. Per cell the JSON report of
``bench vllm`` lands in ``OUT/cells/``; ``OUT/matrix.json`` holds every cell's goals.
"""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path
from typing import Any

from accelgen.argtypes import positive_float, positive_int
from accelgen.core.errors import ConfigError

#: name → (hidden, layers): compute per token 1x, 4x, 16x the tiny model's.
MODEL_SIZES = {"tiny": (256, 2), "x4": (512, 2), "x16": (1024, 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workloads", type=Path, nargs="+", help="workload YAML files (relative ones size themselves)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the cells' reports and matrix.json")
    parser.add_argument(
        "--models", default=",".join(MODEL_SIZES), help=f"comma-separated sizes of {list(MODEL_SIZES)} (default: all)"
    )
    parser.add_argument("--duration-s", type=positive_float, metavar="S", help="replay only arrivals before S seconds")
    parser.add_argument("--repeats", type=positive_int, default=1, help="replays per configuration (default 1)")
    parser.add_argument(
        "--data-dir", type=Path, help="folder with traces/ (default: $ACCELGEN_DATA_DIR or ../shared/data)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="judge the cells' reports already in OUT again; run nothing"
    )


def _models(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODEL_SIZES]
    if unknown or not names:
        raise ConfigError(f"expected names from {list(MODEL_SIZES)}, got {spec!r}", field="--models")
    return names


def _cell_args(args: argparse.Namespace, workload: Path, model_dir: Path, cell_dir: Path) -> argparse.Namespace:
    from accelgen.bench import vllm_cmd

    parser = argparse.ArgumentParser()
    vllm_cmd.add_arguments(parser)
    argv = [
        str(workload),
        "--model", str(model_dir),
        "--json", str(cell_dir / "report.json"),
        "--workdir", str(cell_dir / "work"),
        "--calibrated", str(cell_dir / "fit.json"),
        "--repeats", str(args.repeats),
        "--judge",
    ]  # fmt: skip
    if args.duration_s is not None:
        argv += ["--duration-s", str(args.duration_s)]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    return parser.parse_args(argv)


def _run_cell(args: argparse.Namespace, model: str, model_dir: Path, workload: Path) -> dict[str, Any]:
    from accelgen.bench import vllm_cmd
    from accelgen.bench.goals import cell_goals, tight_tier
    from accelgen.config import read_yaml
    from accelgen.sim.workload import parse_workload

    name = f"{model}-{workload.stem}"
    cell_dir = args.out / "cells" / name
    cell_dir.mkdir(parents=True, exist_ok=True)
    tight = tight_tier(parse_workload(read_yaml(workload)).tiers)
    print(f"=== cell {name} ===", flush=True)
    try:
        if not args.report_only:
            vllm_cmd.run(_cell_args(args, workload, model_dir, cell_dir))
        report = json.loads((cell_dir / "report.json").read_text())
    except Exception as err:  # one cell's failure (a sizing refused, say) is reported; the others still run
        traceback.print_exc()
        return {"cell": name, "model": model, "workload": str(workload), "error": f"{type(err).__name__}: {err}"}
    return {
        "cell": name,
        "model": model,
        "workload": str(workload),
        "sizing": report.get("sizing"),
        "goals": cell_goals(report, tight=tight),
    }


def _fmt(goal: dict[str, Any] | None, spec: str) -> str:
    if not goal or goal.get("value") is None:
        return "–"
    mark = "" if goal["met"] else " ✗"
    return f"{goal['value']:{spec}}{mark}"


def _judge_cell(goals: dict[str, Any]) -> str:
    judge = goals.get("judge")
    if not judge:
        return "–"
    agrees = "agrees" if goals["judge_agrees"]["met"] else "differs ✗"
    return f"{judge['tight_attainment']['value']:.1%}, {judge['goodput_vs_stock']['value']:.2f}x: {agrees}"


def print_matrix(cells: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="AccelGen vs the best stock vLLM configuration, per cell")
    columns = ("cell", "best stock", "tight att.", "late tok.", "goodput ×", "thr ×", "p99 meas/pred", "judge", "sim")
    # The judge column: its own tight-tier attainment and goodput ratio, and whether it agrees.
    for column in (*columns, "verdict"):
        table.add_column(column, justify="left" if column in ("cell", "best stock") else "right")
    for c in cells:
        if "error" in c:
            table.add_row(c["cell"], "–", "–", "–", "–", "–", "–", "–", "–", f"error: {c['error'][:60]}")
            continue
        g = c["goals"]
        table.add_row(
            c["cell"],
            str(g.get("best_stock", "–")),
            _fmt(g.get("tight_attainment"), ".1%"),
            _fmt(g.get("tight_late_tokens"), "d"),
            _fmt(g.get("goodput_vs_stock"), ".2f"),
            _fmt(g.get("throughput_vs_stock"), ".2f"),
            _fmt(g.get("latency_model_p99"), ".2f"),
            _judge_cell(g),
            _fmt(g.get("simulator_vs_engine"), ".0%"),
            "met" if g.get("met") else "missed",
        )
    Console(width=200).print(table)


def run(args: argparse.Namespace) -> int:
    from accelgen.vllm.tiny_model import build_tiny_model

    models = _models(args.models)
    missing = [str(w) for w in args.workloads if not w.is_file()]
    if missing:
        raise ConfigError(f"no such file: {missing[0]}", field="workloads")
    args.out.mkdir(parents=True, exist_ok=True)
    cells = []
    for model in models:
        hidden, layers = MODEL_SIZES[model]
        model_dir = args.out / "models" / model
        if not args.report_only:
            build_tiny_model(model_dir, hidden=hidden, layers=layers)
        for workload in args.workloads:
            cells.append(_run_cell(args, model, model_dir, workload))
            (args.out / "matrix.json").write_text(json.dumps({"cells": cells}, indent=2))
    print_matrix(cells)
    print(f"wrote {args.out / 'matrix.json'}")
    return 0
