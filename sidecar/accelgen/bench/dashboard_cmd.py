"""``accelgen bench dashboard``: the Grafana dashboard's main panels as a PNG, from a real Prometheus.

    accelgen bench dashboard --out docs/dashboard.png            # local stack, ~2 minutes
    accelgen bench dashboard --prometheus http://127.0.0.1:9090 --since 1h --out now.png

Without ``--prometheus`` it starts everything on 127.0.0.1 and stops it afterwards:

    load (streaming completions, three tiers, light → overload → light)
      └─► accelgen serve --engine sim --pool demo   (small batch, so the load can exceed it)
            └─► Prometheus (scrapes /metrics every second; monitoring/rules.yaml, evaluated
                            every 2 s instead of 30 s)

then it runs each panel's PromQL from ``monitoring/dashboard.json`` as a range query
(``$pool``/``$tier`` = all, ``$__rate_interval`` = 30 s) and draws the main panels with
matplotlib, so a reader sees per-tier goodput over time without a Grafana server. Panels
whose queries return nothing are listed, not drawn.

The pieces (:class:`LocalStack`, :func:`run_load`, :func:`dashboard_panels`,
:func:`instant_query`) are what ``tests/deploy`` uses to run every query for real.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from accelgen.argtypes import non_negative_int, positive_float
from accelgen.launch import serve_command
from accelgen.process import ChildProcess, free_port, stop_all

POOL = "demo"
RATE_INTERVAL = "30s"
# Panels drawn in the PNG, by title prefix (the rest stay in Grafana only).
MAIN_PANELS = (
    "Goodput (requests/s)",
    "SLO attainment vs target",
    "TTFT p50 / p99",
    "TBT p50 / p99",
    "Rejected and shed",
    "Engine running / waiting",
)
# The default tiers of `accelgen serve`: (tier, share of arrivals, prompt bytes, max_tokens).
LOAD_MIX = (("interactive", 0.5, 200, 32), ("standard", 0.35, 2000, 64), ("batch", 0.15, 4000, 64))


@dataclass(frozen=True, slots=True)
class Panel:
    """One dashboard panel: its title and its (PromQL, legend format) targets."""

    title: str
    targets: tuple[tuple[str, str], ...]


def substitute(expr: str, *, pool: str = ".*", tier: str = ".*", rate_interval: str = RATE_INTERVAL) -> str:
    """A dashboard expression with Grafana's variables filled in."""
    return expr.replace("$__rate_interval", rate_interval).replace("$pool", pool).replace("$tier", tier)


def dashboard_panels(path: Path) -> list[Panel]:
    """Every panel of a Grafana dashboard JSON that has Prometheus targets."""
    data = json.loads(path.read_text(encoding="utf-8"))
    panels: list[Panel] = []
    for panel in data.get("panels", []):
        targets = tuple((str(t["expr"]), str(t.get("legendFormat", ""))) for t in panel.get("targets", []))
        if targets:
            panels.append(Panel(title=str(panel["title"]), targets=targets))
    return panels


def rule_expressions(path: Path) -> dict[str, str]:
    """Rule name (record or alert) → its PromQL, from a Prometheus rule file."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {
        str(rule.get("record") or rule.get("alert")): str(rule["expr"])
        for group in data["groups"]
        for rule in group["rules"]
    }


def _get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def instant_query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The result vector of an instant query (raises on a PromQL error)."""
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = _get_json(url)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def range_query(prometheus: str, expr: str, *, start_s: float, end_s: float, step_s: float) -> list[dict[str, Any]]:
    """The result matrix of a range query."""
    params = {"query": expr, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}
    body = _get_json(f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(params))
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def prometheus_binary() -> str | None:
    """The Prometheus server (Debian's `prometheus` package), if installed."""
    return shutil.which("prometheus")


@dataclass
class LocalStack:
    """The sim-engine sidecar and a Prometheus scraping it, both on 127.0.0.1.

    Use as a context manager; both processes are stopped (SIGTERM, then SIGKILL) on exit.
    """

    rules: Path
    workdir: Path
    eval_interval_s: float = 2.0
    sim_max_num_seqs: int = 4
    sidecar_url: str = ""
    prometheus_url: str = ""
    _procs: list[ChildProcess] = field(default_factory=list)

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus is not installed (scripts/install-prometheus.sh)")
        sidecar_port, prom_port = free_port(), free_port()
        self.sidecar_url = f"http://127.0.0.1:{sidecar_port}"
        self.prometheus_url = f"http://127.0.0.1:{prom_port}"
        sidecar = serve_command("--pool", POOL, "--sim-max-num-seqs", str(self.sim_max_num_seqs), port=sidecar_port)
        self._procs.append(ChildProcess(sidecar, name="accelgen serve", log_file=self.workdir / "sidecar.log"))
        # The same rules, evaluated every few seconds instead of every 30 s.
        rules = yaml.safe_load(self.rules.read_text(encoding="utf-8"))
        for group in rules["groups"]:
            group["interval"] = f"{self.eval_interval_s:g}s"
        (self.workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "2s"},
            "rule_files": [str(self.workdir / "rules.yaml")],
            "scrape_configs": [
                {"job_name": "accelgen-sidecar", "static_configs": [{"targets": [f"127.0.0.1:{sidecar_port}"]}]}
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = [
            binary, f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ]  # fmt: skip
        self._procs.append(ChildProcess(prometheus, name="prometheus", log_file=self.workdir / "prometheus.log"))
        self._procs[0].wait_ready(self.sidecar_url + "/readyz", timeout_s=60)
        self._procs[1].wait_ready(self.prometheus_url + "/-/ready", timeout_s=60)

    def stop(self) -> None:
        stop_all(reversed(self._procs), grace_s=10.0)
        self._procs.clear()


async def run_load(
    url: str,
    phases: Sequence[tuple[float, float]],
    *,
    seed: int = 7,
    load_mix: Sequence[tuple[str, float, int, int]] = LOAD_MIX,
) -> dict[str, int]:
    """Poisson arrivals of streaming completions: ``phases`` = [(seconds, requests/s), ...],
    each request's tier drawn from ``load_mix`` (as :data:`LOAD_MIX`).

    Returns the count of answers by HTTP status (and "error" for connection failures).
    """
    import aiohttp

    rng = random.Random(seed)
    counts: dict[str, int] = {}
    names = [m[0] for m in load_mix]
    weights = [m[1] for m in load_mix]
    mix = {m[0]: m for m in load_mix}
    limit = asyncio.Semaphore(200)

    async def one(session: aiohttp.ClientSession, tier: str) -> None:
        _, _, prompt_bytes, max_tokens = mix[tier]
        body = {"prompt": "x" * prompt_bytes, "max_tokens": max_tokens, "stream": True}
        key = "error"
        async with limit:
            try:
                async with session.post(url + "/v1/completions", json=body, headers={"x-accelgen-tier": tier}) as resp:
                    key = str(resp.status)
                    async for _ in resp.content:
                        pass
            except (aiohttp.ClientError, TimeoutError):
                key = "error"
        counts[key] = counts.get(key, 0) + 1

    tasks: list[asyncio.Task[None]] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for duration_s, rate in phases:
            end = time.monotonic() + duration_s
            while True:
                await asyncio.sleep(rng.expovariate(rate))
                if time.monotonic() >= end:
                    break
                tier = rng.choices(names, weights)[0]
                tasks.append(asyncio.create_task(one(session, tier)))
        await asyncio.gather(*tasks)
    return counts


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def render_png(
    prometheus: str,
    panels: Sequence[Panel],
    *,
    start_s: float,
    end_s: float,
    out: Path,
    step_s: float = 2.0,
) -> tuple[list[str], list[str]]:
    """Draw ``panels`` (a 3 × 2 grid) from range queries; returns (drawn, without data) titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    rows = max(1, (len(panels) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.6 * rows), squeeze=False)
    drawn: list[str] = []
    empty: list[str] = []
    for ax, panel in zip(axes.flat, panels, strict=False):
        lines = 0
        for expr, legend in panel.targets:
            for series in range_query(prometheus, substitute(expr), start_s=start_s, end_s=end_s, step_s=step_s):
                times = [float(t) - start_s for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                label = _legend(legend, series["metric"])
                style = "--" if "target" in label or "throughput" in label else "-"
                ax.plot(times, values, style, label=label, linewidth=1.2)
                lines += 1
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=7, ncol=2, loc="upper left")
            drawn.append(panel.title)
        else:
            empty.append(panel.title)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("AccelGen: per-tier goodput (sim engine, pool demo, queried from Prometheus)", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return drawn, empty


def main_panels(dashboard: Path) -> list[Panel]:
    """The panels drawn in the PNG, in :data:`MAIN_PANELS` order."""
    panels = dashboard_panels(dashboard)
    return [p for prefix in MAIN_PANELS for p in panels if p.title.startswith(prefix)]


def _since_s(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration like 90s, 15m or 1h: {text!r}")
    if float(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``accelgen bench dashboard``."""
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"), help="PNG to write")
    parser.add_argument("--dashboard", type=Path, default=Path("monitoring/dashboard.json"))
    parser.add_argument("--rules", type=Path, default=Path("monitoring/rules.yaml"))
    parser.add_argument("--prometheus", metavar="URL", help="query this Prometheus instead of starting the local stack")
    parser.add_argument("--since", type=_since_s, default=_since_s("15m"), help="with --prometheus: time range")
    parser.add_argument("--duration", type=positive_float, default=120.0, help="local stack: seconds of load")
    parser.add_argument("--seed", type=non_negative_int, default=7)


def run(args: argparse.Namespace) -> int:
    """Query (or first start and load) Prometheus, then draw the PNG."""
    if not args.dashboard.is_file():
        print(f"accelgen: error: dashboard not found: {args.dashboard}", file=sys.stderr)
        return 2
    panels = main_panels(args.dashboard)
    if args.prometheus:
        end = time.time()
        drawn, empty = render_png(
            args.prometheus.rstrip("/"), panels, start_s=end - args.since, end_s=end, out=args.out
        )
    else:
        if prometheus_binary() is None:
            print("accelgen: error: prometheus is not installed (scripts/install-prometheus.sh)", file=sys.stderr)
            return 2
        d = args.duration
        phases = [(0.3 * d, 2.0), (0.4 * d, 16.0), (0.3 * d, 2.0)]  # light, overload, light
        with (
            tempfile.TemporaryDirectory(prefix="accelgen-dashboard-") as tmp,
            LocalStack(args.rules, Path(tmp)) as stack,
        ):
            start = time.time()
            counts = asyncio.run(run_load(stack.sidecar_url, phases, seed=args.seed))
            time.sleep(5)  # the last scrapes and rule evaluations
            print(f"load: {sum(counts.values())} requests, by status {dict(sorted(counts.items()))}")
            drawn, empty = render_png(stack.prometheus_url, panels, start_s=start, end_s=time.time(), out=args.out)
    print(f"wrote {args.out}: {len(drawn)} panels drawn")
    for title in empty:
        print(f"no data: {title}")
    return 0 if drawn else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m accelgen.bench.dashboard_cmd`` (until ``accelgen bench dashboard`` is wired)."""
    parser = argparse.ArgumentParser(prog="accelgen bench dashboard", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
