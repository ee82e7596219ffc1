"""The sidecar's state: configuration, engine client, admission, metrics and window stats."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from accelgen.core.tiers import TierSet
from accelgen.server.admission import Admission
from accelgen.server.engine import EngineClient
from accelgen.server.errors import ApiError
from accelgen.server.limits import TenantLimiter
from accelgen.server.metrics import SidecarMetrics, observe_all
from accelgen.server.pod_state import InEngine, pod_state
from accelgen.server.speed import Speed
from accelgen.server.stats import WindowStats
from accelgen.server.stream import Timing
from accelgen.server.tenants import KeyStore, Tenant
from accelgen.server.tickets import AdmissionConfig, Ticket

log = logging.getLogger("accelgen.server")


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """Everything that shapes one sidecar, already loaded and validated."""

    tiers: TierSet
    engine_url: str
    keys: KeyStore | None = None
    pool: str | None = None
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    connect_timeout_s: float = 30.0
    token_timeout_s: float = 30.0
    poll_interval_s: float = 0.25
    stats_window_s: int = 60
    engine_stats_path: str | None = None  # accelgen.vllm's side channel (ACCELGEN_STATS_FILE)
    engine_socket: str | None = None  # the embedded sim engine's Unix socket (engine_url names no port)
    open_stats: bool = False  # GET /stats without a key even when keys are configured


class Sidecar:
    """One sidecar's live state, shared by every handler."""

    def __init__(self, config: SidecarConfig, speed: Speed) -> None:
        self.config = config
        self.tiers = config.tiers
        self.keys = config.keys
        self.limiter = TenantLimiter()
        self.engine = EngineClient(
            config.engine_url,
            connect_timeout_s=config.connect_timeout_s,
            token_timeout_s=config.token_timeout_s,
            stats_path=config.engine_stats_path,
            unix_socket=config.engine_socket,
        )
        self.metrics = SidecarMetrics(config.tiers, pool=config.pool)
        self.stats = WindowStats(config.stats_window_s)
        # Released to the engine and not finished, by id(ticket) (for /pool/state).
        self.in_engine: dict[int, InEngine] = {}
        self.admission = Admission(
            config.admission,
            speed,
            self.engine.state,
            on_shed=self._shed,
            unstarted=lambda: (e.ticket for e in self.in_engine.values() if e.first_token_s is None),
        )

    def engine_updated(self) -> None:
        """After each engine poll: follow the engine's latest fit of its own steps (what
        admission and ``/pool/state`` predict with: the engine's speed, not the model the
        sidecar started with), then release what now has room."""
        fit = self.engine.state.latency_model.fit
        speed = self.admission.speed
        if fit is not None and fit != speed.model:
            self.admission.follow(Speed(fit, context_tokens=speed.context_tokens))
        self.admission.pump()

    def set_tiers(self, tiers: TierSet) -> None:
        """Swap the tier configuration; in-flight and queued requests keep theirs."""
        self.tiers = tiers
        self.metrics.set_tiers(tiers)
        log.info("tiers reloaded: %s", ", ".join(t.name for t in tiers))

    def authenticate(self, header: str | None) -> Tenant | None:
        """The tenant of a ``Bearer`` key; None when no keys are configured; 401 otherwise."""
        if self.keys is None:
            return None
        if not header:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", code="no_key")
        scheme, _, key = header.partition(" ")
        tenant = self.keys.authenticate(key.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise ApiError(401, "invalid API key", code="invalid_key")
        return tenant

    def rejected(self, tier: str) -> None:
        self.metrics.count(tier, "rejected")
        self.stats.rejected(tier, time.monotonic())

    def _shed(self, ticket: Ticket) -> None:
        self.metrics.count(ticket.tier.name, "shed")
        self.stats.rejected(ticket.tier.name, time.monotonic())

    def completed(self, timing: Timing, now_s: float) -> None:
        """Account a completed request in the counters, histograms and window."""
        name = timing.tier.name
        series = self.metrics.series(name)
        met = timing.meets_slo(now_s)
        tokens = timing.num_output_tokens
        series.completed.inc()
        series.output_tokens.inc(tokens)
        if met:
            series.slo_met.inc()
            series.goodput_tokens.inc(tokens)
        if timing.ttft_s is not None:
            series.ttft.observe(timing.ttft_s)
        observe_all(series.tbt, timing.gaps_s)
        self.stats.completed(name, now_s, met=met, tokens=tokens, ttft_s=timing.ttft_s, gaps_s=timing.gaps_s)

    def refresh_gauges(self) -> dict[str, Any]:
        """Copy queue depths, headroom and the engine snapshot into the gauges (before a
        scrape); returns the pod's state (:func:`pod_state`) they were taken from."""
        m, state = self.metrics, self.engine.state
        pod = pod_state(self, time.monotonic())
        headroom: dict[str, float] = pod["headroom"]
        for tier in self.tiers:
            m.queue_depth.labels(**m.labels(tier.name)).set(self.admission.depth.get(tier.name, 0))
            m.headroom.labels(**m.labels(tier.name)).set(headroom.get(tier.name, 0.0))
        values = (
            (m.engine_ready, 1.0 if state.ready else 0.0),
            (m.engine_running, state.running),
            (m.engine_waiting, state.waiting),
            (m.engine_kv, state.kv_usage),
            (m.engine_preemptions, state.preemptions),
        )
        for gauge, value in values:
            (gauge.labels(pool=m.pool) if m.pool else gauge).set(value)
        m.set_budget(state.budget_tokens, state.planner_s)
        m.set_latency_model(state.latency_model)
        return pod
