"""``accelgen-operator bench``: reconcile N pools against the emulated API and measure.

Reports the time from the first pool's creation until every pool is converged (children
applied, status observed), the API requests per pool by method, and then checks that
nothing is written again: neither while idle for a few stats intervals nor when the
operator restarts and resumes every pool.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from accelgen_operator import GROUP, PLURAL, VERSION
from accelgen_operator.emulator import ApiServerEmulator, emulated_api
from accelgen_operator.handlers import OperatorConfig
from accelgen_operator.runner import running_operator

POOLS_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"
_CHILDREN_PER_POOL = 4  # ConfigMap, Deployment, Service, PodDisruptionBudget


def sample_pool(name: str, namespace: str) -> dict[str, Any]:
    """A small valid pool (the same shape as examples/llama-three-tiers.yaml)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "replicas": 1,
            "engine": {"image": "ghcr.io/accelgen/accelgen-engine:0.1.0", "gpus": 1},
            "sidecar": {"image": "ghcr.io/accelgen/accelgen-sidecar:0.1.0"},
            "tiers": [
                {"name": "interactive", "ttftMs": 500, "tbtMs": 100, "attainmentTarget": 0.95},
                {"name": "standard", "ttftMs": 2000, "tbtMs": 250},
                {"name": "batch", "deadlineSeconds": 3600, "priority": 2},
            ],
            "defaultTier": "standard",
        },
    }


@dataclass
class BenchResult:
    pools: int
    converge_s: float
    requests_per_pool: dict[str, float]
    breakdown: dict[str, float]
    writes_per_pool: float
    idle_writes: int
    restart_child_writes: int
    restart_pool_writes: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.idle_writes == 0 and self.restart_child_writes == 0


def _target(path: str) -> str:
    """``inferencepools/status``, ``deployments``, ``discovery`` ... from a request path."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts:
        rest = parts[parts.index("namespaces") + 2 :]
        return "/".join([rest[0]] + (rest[2:3] if len(rest) > 2 else [])) if rest else "namespace"
    return parts[-1] if len(parts) > 2 else "discovery"


def _converged(emu: ApiServerEmulator, names: list[str], namespace: str) -> bool:
    objects = emu.objects
    kinds: collections.Counter[str] = collections.Counter()
    for (resource, ns, _), obj in objects.items():
        if ns == namespace and not obj.deleted and resource.plural not in (None, PLURAL):
            kinds[str(resource.plural)] += 1
    if sum(kinds.values()) < _CHILDREN_PER_POOL * len(names):
        return False
    for name in names:
        obj = objects[f"{GROUP}/{VERSION}/{PLURAL}", namespace, name]
        status = dict(obj).get("status") or {}
        generation = dict(obj).get("metadata", {}).get("generation")
        reconciled = (status.get("lastReconcile") or {}).get("reason") == "Reconciled"
        if not reconciled or status.get("observedGeneration") != generation:
            return False
        if not any(c.get("type") == "SLOAttained" for c in status.get("conditions") or []):
            return False
    return True


async def _wait_quiet(emu: ApiServerEmulator, *, quiet_s: float, timeout_s: float) -> None:
    """Wait until no write has happened for ``quiet_s`` (or ``timeout_s`` passed)."""
    deadline = time.monotonic() + timeout_s
    seen, since = len(emu.writes()), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now_writes = len(emu.writes())
        if now_writes != seen:
            seen, since = now_writes, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


async def run_bench(*, num_pools: int, stats_interval_s: float = 2.0, timeout_s: float = 120.0) -> BenchResult:
    """Create ``num_pools`` pools, wait for convergence, then check for repeated writes."""
    namespace = "bench"
    names = [f"pool-{i:03d}" for i in range(num_pools)]
    async with emulated_api() as (emu, url):
        cfg = OperatorConfig(api_url=url, stats_interval_s=stats_interval_s, stats_timeout_s=0.5)
        async with running_operator(cfg), aiohttp.ClientSession() as http:
            start_index = len(emu.log)
            started = time.monotonic()
            for name in names:
                body = sample_pool(name, namespace)
                resp = await http.post(url + POOLS_PATH.format(ns=namespace), json=body)
                resp.raise_for_status()
            while not _converged(emu, names, namespace):
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"{num_pools} pools did not converge in {timeout_s:g} s")
                await asyncio.sleep(0.05)
            converge_s = time.monotonic() - started
            # The benchmark's own POSTs of the pools are not the operator's requests.
            log = emu.log[start_index:]
            # The benchmark's own POSTs of the pools are not the operator's requests.
            ours = [(m, p) for m, p in log if not (m == "POST" and p.endswith(f"/{PLURAL}"))]
            by_method = collections.Counter(m for m, _ in ours)
            requests_per_pool = {m: round(n / num_pools, 2) for m, n in sorted(by_method.items())}
            by_target = collections.Counter(f"{m} {_target(p)}" for m, p in ours)
            breakdown = {k: round(n / num_pools, 2) for k, n in sorted(by_target.items())}
            writes = sum(n for m, n in by_method.items() if m in ("POST", "PATCH", "PUT", "DELETE"))
            # Let in-flight timers land, then watch a few stats intervals for any write.
            await _wait_quiet(emu, quiet_s=stats_interval_s * 1.5, timeout_s=timeout_s)
            idle_from = len(emu.log)
            await asyncio.sleep(stats_interval_s * 3)
            idle_writes = len(emu.writes(idle_from))
        restart_from = len(emu.log)
        async with running_operator(cfg):
            await asyncio.sleep(stats_interval_s * 3)
        restart = emu.writes(restart_from)
        child_writes = [w for w in restart if f"/{PLURAL}/" not in w[1] and "/events" not in w[1]]
        pool_writes = [w for w in restart if f"/{PLURAL}/" in w[1]]
    notes = [
        "requests include kopf's own (watch streams, finalizers, its annotations, events)",
        f"stats interval {stats_interval_s:g} s; no pods exist, so /stats is never reached",
    ]
    return BenchResult(
        pools=num_pools,
        converge_s=round(converge_s, 3),
        requests_per_pool=requests_per_pool,
        breakdown=breakdown,
        writes_per_pool=round(writes / num_pools, 2),
        idle_writes=idle_writes,
        restart_child_writes=len(child_writes),
        restart_pool_writes=len(pool_writes),
        notes=notes,
    )


def format_result(result: BenchResult) -> str:
    """The human-readable report."""
    per_pool = ", ".join(f"{m} {n:g}" for m, n in result.requests_per_pool.items())
    total = sum(result.requests_per_pool.values())
    lines = [
        f"pools:                         {result.pools}",
        f"time to converge:              {result.converge_s:.2f} s",
        f"API requests per pool:         {total:.2f} ({per_pool})",
        f"writes per pool:               {result.writes_per_pool:.2f}",
        f"writes while idle (3 intervals): {result.idle_writes}",
        f"writes to children on restart: {result.restart_child_writes}",
        f"writes to pools on restart:    {result.restart_pool_writes} (kopf's bookkeeping)",
        "no repeated writes:            " + ("yes" if result.ok else "NO"),
        "requests per pool by target (until converged):",
    ]
    lines += [f"  {key:<36} {n:g}" for key, n in result.breakdown.items()]
    return "\n".join(lines + [f"note: {n}" for n in result.notes])


def main(*, num_pools: int, stats_interval_s: float, json_path: str | None) -> int:
    """Run the benchmark, print the report; exit status 1 if anything was written again."""
    result = asyncio.run(run_bench(num_pools=num_pools, stats_interval_s=stats_interval_s))
    print(format_result(result))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump({**asdict(result), "ok": result.ok}, fh, indent=2)
    return 0 if result.ok else 1
