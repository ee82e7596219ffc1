"""A pool's pods and what each one reports, refreshed every ~100 ms to 1 s.

Where the pods are: a static list (``--pods host:port,...``) or a headless Service's DNS
name (``--pods-dns name.namespace.svc:port``), resolved again every refresh, as a
Kubernetes headless Service answers with one address per ready pod (no RBAC needed).

What a pod reports, read over HTTP with aiohttp's client::

    GET /pool/state  (an AccelGen sidecar)   → {"ready": ..., "waiting": ..., "headroom": {...}, ...}
                                               the keys of PodState less name and address
       404 ──► GET /metrics  (plain vLLM)     → vllm:num_requests_waiting / _running,
                                               vllm:kv_cache_usage_perc

A pod that does not answer in time, answers an error or a document that is not the
format is not ready until it answers again. The pods are read one after another across
each refresh interval, not all at once (:meth:`PodWatcher.run`). Between two reads the picker's own
placements are added to the pod it chose (:meth:`PodWatcher.placed`), so a burst
that arrives within one refresh is not all sent to the pod that looked emptiest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import math
import socket
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from accelgen.core.routing import PodState, RouteRequest

log = logging.getLogger(__name__)

STATE_PATH = "/pool/state"
METRICS_PATH = "/metrics"
_WAITING = "vllm:num_requests_waiting"
_RUNNING = "vllm:num_requests_running"
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for an IPv6 address) as (host, port); ValueError if not one."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"not a host:port address: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # ValueError when it is not one
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets ([addr]:port): {text!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (as Envoy and the protocol write it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_pod_list(text: str) -> tuple[str, ...]:
    """``host:port,host:port,...`` as normalized addresses; ValueError naming the bad one."""
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if not items:
        raise ValueError("no pod address given")
    return tuple(dict.fromkeys(format_address(*parse_address(item)) for item in items))


@dataclass(frozen=True, slots=True)
class PodSource:
    """Where a pool's pods are: ``addresses`` as given, or every address ``dns_name`` resolves to."""

    addresses: tuple[str, ...] = ()
    dns_name: str | None = None
    dns_port: int = 0

    @classmethod
    def static(cls, text: str) -> PodSource:
        return cls(addresses=parse_pod_list(text))

    @classmethod
    def dns(cls, text: str) -> PodSource:
        host, port = parse_address(text)
        return cls(dns_name=host, dns_port=port)

    async def resolve(self) -> tuple[str, ...]:
        """The pods' addresses now (a DNS name that does not resolve: none)."""
        if self.dns_name is None:
            return self.addresses
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.dns_name, self.dns_port, type=socket.SOCK_STREAM)
        except OSError as err:
            log.warning("pods: %s does not resolve (%s)", self.dns_name, err)
            return ()
        found = (format_address(str(info[4][0]), self.dns_port) for info in infos)
        return tuple(sorted(dict.fromkeys(found)))


def _decode(key: str, kind: Any, value: object) -> Any:
    """``value`` checked against PodState's annotation ``kind``: counts >= 0, finite numbers."""
    if get_origin(kind) in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [arg for arg in get_args(kind) if arg is not type(None)]
        return _decode(key, inner, value)
    if get_origin(kind) in (Mapping, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be an object, got {value!r}")
        _, inner = get_args(kind)
        return {str(k): _decode(f"{key}.{k}", inner, v) for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean, got {value!r}")
        return value
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a whole number >= 0, got {value!r}")
        return value
    if kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    raise TypeError(f"no reading for PodState.{key}: {kind!r}")  # a field this reader must learn


# What a pod reports: every field of PodState but the two the picker knows itself.
_REPORTED = {name: kind for name, kind in get_type_hints(PodState).items() if name not in ("name", "address")}


def pod_from_state(name: str, address: str, doc: object) -> PodState:
    """A pod's ``GET /pool/state`` document as a PodState; ValueError names a bad field.

    Every field of PodState is read by its type; keys this reader does not know are
    ignored, and a missing key keeps PodState's default ("not reported"), so an older or
    newer sidecar is still read.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"{STATE_PATH} must be a JSON object")
    values = {key: _decode(key, kind, doc[key]) for key, kind in _REPORTED.items() if key in doc}
    if values.get("kv_usage") is not None:
        values["kv_usage"] = min(1.0, max(0.0, values["kv_usage"]))  # an engine's usage may round past 1
    return PodState(name=name, address=address, **values)


def pod_from_metrics(name: str, address: str, text: str) -> PodState:
    """A pod known only by vLLM's metrics (an external vLLM): waiting, running, KV use."""
    wanted = (_WAITING, _RUNNING, *_KV)
    lines = [line for line in text.splitlines() if line.startswith(wanted)]
    waiting = running = 0.0
    kv = 0.0
    with contextlib.suppress(ValueError):  # a page that does not parse: nothing reported
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name == _WAITING:
                    waiting += sample.value
                elif sample.name == _RUNNING:
                    running += sample.value
                elif sample.name in _KV:
                    kv = max(kv, sample.value)
    return PodState(name=name, address=address, waiting=int(waiting), running=int(running), kv_usage=min(1.0, kv))


class PodWatcher:
    """The pods of ``source`` and their state, refreshed every ``refresh_s`` by :meth:`run`.

    Args:
        source: Where the pods are.
        refresh_s: Time between two refreshes.
        timeout_s: How long one pod may take to answer (default: twice ``refresh_s``,
            between 0.2 and 2 s).
    """

    def __init__(self, source: PodSource, *, refresh_s: float = 0.2, timeout_s: float | None = None) -> None:
        self.source = source
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s if timeout_s is not None else min(2.0, max(0.2, 2 * refresh_s))
        self._pods: tuple[PodState, ...] = ()
        self._metrics_only: set[str] = set()  # pods with no /pool/state: read their /metrics
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Event()
        self.num_refreshes = 0

    @property
    def pods(self) -> tuple[PodState, ...]:
        """Every pod as last read (plus the placements since), ready or not."""
        return self._pods

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def _read(self, address: str) -> PodState:
        session = self._client()
        try:
            if address not in self._metrics_only:
                async with session.get(f"http://{address}{STATE_PATH}") as resp:
                    if resp.status == 200:
                        return pod_from_state(address, address, await resp.json(content_type=None))
                    if resp.status != 404:
                        raise ValueError(f"{STATE_PATH} answered HTTP {resp.status}")
                    self._metrics_only.add(address)
            async with session.get(f"http://{address}{METRICS_PATH}") as resp:
                if resp.status != 200:
                    raise ValueError(f"{METRICS_PATH} answered HTTP {resp.status}")
                return pod_from_metrics(address, address, await resp.text())
        except (TimeoutError, aiohttp.ClientError, ValueError) as err:
            log.debug("pod %s not ready: %s", address, err or type(err).__name__)
            return PodState(name=address, address=address, ready=False)

    def _signal(self) -> None:
        self.num_refreshes += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def refresh(self) -> tuple[PodState, ...]:
        """Resolve the pods and read every one of them now, at once."""
        addresses = await self.source.resolve()
        self._pods = tuple(await asyncio.gather(*(self._read(a) for a in addresses)))
        self._metrics_only &= set(addresses)
        self._signal()
        return self._pods

    async def wait_changed(self, timeout_s: float) -> None:
        """Until the next refresh, or ``timeout_s``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    def placed(self, pod_name: str, request: RouteRequest) -> None:
        """Count a request just sent to ``pod_name`` there until the next refresh reads it."""
        self._pods = tuple(_with_request(p, request) if p.name == pod_name else p for p in self._pods)

    async def _read_into(self, address: str) -> None:
        state = await self._read(address)
        self._pods = tuple(state if p.address == address else p for p in self._pods)

    async def _round(self, loop: asyncio.AbstractEventLoop, reads: dict[str, asyncio.Task[None]]) -> None:
        """One refresh: resolve, then read each pod at its own moment of the interval."""
        start = loop.time()
        addresses = await self.source.resolve()
        known = {p.address: p for p in self._pods}
        # A pod new to the pool is not ready until it has answered once.
        self._pods = tuple(known.get(a) or PodState(name=a, address=a, ready=False) for a in addresses)
        self._metrics_only &= set(addresses)
        for i, address in enumerate(addresses):
            await asyncio.sleep(max(0.0, start + i * self.refresh_s / len(addresses) - loop.time()))
            if address not in reads or reads[address].done():  # a slow pod is not asked twice at once
                reads[address] = asyncio.create_task(self._read_into(address))
        for gone in set(reads) - set(addresses):
            reads.pop(gone).cancel()
        await asyncio.sleep(max(0.0, start + self.refresh_s - loop.time()))
        self._signal()

    async def run(self) -> None:
        """Refresh every ``refresh_s`` until cancelled.

        NOTE: the pods are read one after another across the interval, not all at once:
        a burst of N answers would hold the event loop, and every request placed
        meanwhile, for N answers' time.
        """
        loop = asyncio.get_running_loop()
        reads: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                await self._round(loop, reads)
        finally:
            for task in reads.values():
                task.cancel()
            await asyncio.gather(*reads.values(), return_exceptions=True)
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _with_request(pod: PodState, request: RouteRequest) -> PodState:
    """``pod`` holding one more waiting request of ``request``'s tier and prompt."""
    tokens = request.prompt_tokens
    headroom = dict(pod.headroom)
    if request.tier in headroom:
        headroom[request.tier] -= tokens
    by_tier = dict(pod.queued_tokens_by_tier)
    if by_tier or pod.queued_prefill_tokens is not None:
        by_tier[request.tier] = by_tier.get(request.tier, 0) + tokens
    queued = None if pod.queued_prefill_tokens is None else pod.queued_prefill_tokens + tokens
    return dataclasses.replace(
        pod, waiting=pod.waiting + 1, headroom=headroom, queued_prefill_tokens=queued, queued_tokens_by_tier=by_tier
    )


def ready_count(pods: Sequence[PodState]) -> int:
    return sum(1 for p in pods if p.ready)
