"""AccelGen as vLLM's scheduler: the core planner decides, vLLM's own ``schedule()`` executes.

Use ``--scheduler-cls accelgen.vllm.AccelGenScheduler`` (or
``accelgen.vllm.AccelGenAsyncScheduler`` where async scheduling is on, the GPU default).
Settings come from ``ACCELGEN_*`` environment variables (:mod:`accelgen.vllm.settings`).

Every step::

    sync      mirror vLLM's requests into core Requests (tokens computed and emitted,
              blocks held, running or waiting) and vLLM's free KV blocks into the policy
    plan      policy.plan(now)  — accelgen.core decides budget, order, admissions,
              which long prompt gets budget and whom to preempt
    steer     preempt the plan's victims (vLLM's own _preempt_request: free + recompute);
              budget  = Σ planned chunk tokens  → self.max_num_scheduled_tokens
              running = planned, full chunks first, the cut chunk last, then the rest
              waiting = only the planned admissions, in plan order (others set aside)
              one cut chunk: long_prefill_token_threshold = its size, so vLLM cuts it
              exactly where the plan did
    execute   super().schedule()  — vLLM allocates KV and builds the batch
    time      schedule() return → update_from_output(): the step's duration, fed to the
              online calibration; async: the step starts when the previous one ended

vLLM fills the budget greedily in the order given, so ordering the one cut chunk last
makes it take exactly what the plan left for it::

    budget = 1 + 1 + 1 + 509      running: [d1 d2 d3 | long prompt (cut at 509)]
             decodes   cut chunk  waiting: [] (set aside: everything unplanned)

The adapter holds no scheduling logic; it only translates. Observability leaves the
process through the stats file (:mod:`accelgen.vllm.stats`).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request as VllmRequest
from vllm.v1.request import RequestStatus

from accelgen.core.calibration import prior_for
from accelgen.core.errors import ConfigError
from accelgen.core.latency import BatchShape, FittedLatencyModel
from accelgen.core.plan import EngineLimits, IterationPlan
from accelgen.core.policies import get_spec, make_policy
from accelgen.core.policy import Policy
from accelgen.core.request import Request, blocks_for
from accelgen.vllm.calibration import persisted_calibrator
from accelgen.vllm.settings import settings_from_env
from accelgen.vllm.stats import EngineStats
from accelgen.wire import resolve_tier

if TYPE_CHECKING:
    _SchedulerBase = Scheduler
else:
    _SchedulerBase = object

# Under "vllm." so vLLM's logging configuration (handlers, level) applies to it.
logger = init_logger("vllm.accelgen.scheduler")


@dataclass(slots=True)
class _PendingStep:
    """A scheduled step waiting for its output, for timing."""

    output: SchedulerOutput
    started_s: float  # perf_counter when schedule() was called
    shape: BatchShape
    predicted_s: float
    record: dict[str, Any] | None  # for the step log, completed with the measured time


def batch_shape(output: SchedulerOutput, requests: dict[str, VllmRequest]) -> BatchShape:
    """The shape of a step vLLM scheduled (call after ``schedule()`` advanced the counts)."""
    shape = BatchShape()
    for req_id, n in output.num_scheduled_tokens.items():
        r = requests[req_id]
        context = r.num_computed_tokens - n
        if n == 1 and r.num_output_tokens > 0 and r.num_tokens - context <= 1:
            shape = shape.plus_decode(context_tokens=context)
        else:
            shape = shape.plus_prefill(n, context_tokens=context)
    return shape


#: Policy name of the pass-through mode: vLLM's own scheduling, timed the same way (for
#: the stock baseline and overhead ratios on the very same engine).
STOCK_POLICY = "vllm-stock"


class _AccelGenMixin(_SchedulerBase):
    """The AccelGen adapter over vLLM's ``Scheduler`` or ``AsyncScheduler``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accelgen_settings = settings_from_env(os.environ)
        s = self.accelgen_settings
        num_gpu_blocks = self.cache_config.num_gpu_blocks
        assert num_gpu_blocks is not None
        self._cap_tokens = self.scheduler_config.max_num_batched_tokens
        self._cap_threshold = self.scheduler_config.long_prefill_token_threshold
        self._reserve_full_isl = self.scheduler_reserve_full_isl
        self.engine_limits = EngineLimits(
            num_kv_blocks=num_gpu_blocks - 1,  # one block is vLLM's reserved null block
            block_size_tokens=self.block_size,
            max_num_batched_tokens=self._cap_tokens,
            max_num_seqs=self.max_num_running_reqs,
        )
        self.calibrator = persisted_calibrator(
            prior=self._prior(),
            path=s.calibration_file,
            min_samples=s.min_fit_samples,
            refit_every=s.refit_every,
            slowdown_quantile=s.slowdown_quantile,
        )
        self.policy_name = s.policy
        self.planner: Policy | None = self._make_planner(s.policy)
        self.accelgen_stats = EngineStats(policy=s.policy, path=s.stats_file, step_log=s.step_log)
        self._mirrors: dict[str, Request] = {}
        self._pending: deque[_PendingStep] = deque()
        self._last_update_end_s = 0.0  # perf_counter at the end of the last update
        self._last_token_wall_s = time.time()
        self.last_plan: IterationPlan | None = None  # for debugging and tests
        logger.info(
            "AccelGen scheduler: policy=%s tiers=%s blocks=%d block_size=%d cap=%d model=%s",
            s.policy,
            [t.name for t in s.tiers],
            self.engine_limits.num_kv_blocks,
            self.block_size,
            self._cap_tokens,
            self.calibrator.model.name,
        )
        self._publish_calibration()

    def _prior(self) -> FittedLatencyModel:
        """The latency model until the engine has timed its own steps: the tiny CPU prior
        scaled to this model's size (a calibration file, when given, replaces it)."""
        hf = self.vllm_config.model_config.hf_config
        hidden = int(getattr(hf, "hidden_size", 256))
        return prior_for(
            hidden=hidden,
            layers=int(getattr(hf, "num_hidden_layers", 2)),
            intermediate=int(getattr(hf, "intermediate_size", 2 * hidden)),
        )

    def _make_planner(self, name: str) -> Policy | None:
        # vLLM admits a new request only if blocks for its whole prompt are free
        # (scheduler_reserve_full_isl), even when it runs a first chunk only; under a
        # planner, admission and KV reservation are the policy's decision (AccelGen
        # reserves for the predicted output too), so vLLM allocates what is scheduled.
        self.scheduler_reserve_full_isl = self._reserve_full_isl if name == STOCK_POLICY else False
        if name == STOCK_POLICY:
            return None
        if get_spec(name).clairvoyant:
            raise ConfigError(f"policy {name!r} needs future knowledge; it runs only in the simulator")
        return make_policy(
            name,
            tiers=self.accelgen_settings.tiers,
            latency_model=self.calibrator.model,
            limits=self.engine_limits,
            config=self.accelgen_settings.policy_config,
        )

    def use_policy(self, name: str) -> None:
        """Switch policy (a core policy name or ``vllm-stock``) while the engine is idle.

        Lets one engine be measured under each policy (in-process benchmarks, tests);
        the calibrated latency model carries over.
        """
        if self.requests:
            raise RuntimeError("switch policies only when no request is in the engine")
        self.planner = self._make_planner(name)
        self.policy_name = name
        self.accelgen_stats.policy = name
        self._mirrors.clear()

    # ------------------------------------------------------------ requests in and out

    def add_request(self, request: VllmRequest) -> None:
        known = request.request_id in self.requests
        super().add_request(request)
        if known or request.request_id not in self.requests:
            return
        params = request.sampling_params
        resolved = resolve_tier(params.extra_args if params else None, self.accelgen_settings.tiers)
        if resolved.problem:
            self.accelgen_stats.slo_problems[resolved.problem] += 1
        mirror = Request(
            request_id=request.request_id,
            arrival_s=request.arrival_time,
            num_prompt_tokens=request.num_prompt_tokens,
            max_tokens=request.max_tokens,
            tier=resolved.tier,
        )
        self._mirrors[request.request_id] = mirror
        self.accelgen_stats.requests_by_tier[resolved.tier.name] += 1
        if self.planner is not None:
            self.planner.add_request(mirror)

    def _free_request(
        self, request: VllmRequest, delay_free_blocks: bool = False
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        result = super()._free_request(request, delay_free_blocks)
        if not self.requests:  # idle from now on: no step will write the stats soon
            self.accelgen_stats.maybe_write(force=True)
        mirror = self._mirrors.pop(request.request_id, None)
        planner = self.planner
        if mirror is not None and planner is not None:
            aborted = request.status == RequestStatus.FINISHED_ABORTED
            if aborted or all(m is not mirror for m in planner.running):
                planner.abort(mirror.request_id)
            else:
                self._sync_one(request, mirror)
                planner.finish(mirror, now=time.time())
        return result

    # ----------------------------------------------------------------- the step

    def schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        t0 = time.perf_counter()
        planner = self.planner
        plan: IterationPlan | None = None
        exact = False
        if planner is not None:
            self._sync(planner)
            plan = planner.plan(time.time())
            self.last_plan = plan
            if plan.is_empty and not self.running and len(self.waiting) > 0:
                # Liveness guard: an idle engine with queued work must not stay idle
                # (a policy may find no request admissible, e.g. a TBT target below
                # one decode step). vLLM admits in its own order; the next sync adopts.
                self.accelgen_stats.num_fallback_steps += 1
                plan = None
        if plan is None:  # vllm-stock (or the guard): vLLM decides, we time and count
            output = super().schedule(*args, **kwargs)
            returned_s = time.perf_counter()
            record = self._record_stock(output, schedule_s=returned_s - t0)
        else:
            planner_s = time.perf_counter() - t0
            hidden_waiting, hidden_running, planned = self._steer(plan)
            try:
                output = super().schedule(*args, **kwargs)
            finally:
                self.max_num_scheduled_tokens = self._cap_tokens
                self.scheduler_config.long_prefill_token_threshold = self._cap_threshold
                self.running.extend(hidden_running)
                for r in hidden_waiting:
                    self.waiting.add_request(r)
            returned_s = time.perf_counter()
            exact = output.num_scheduled_tokens == planned
            record = self._record(plan, output, planned, exact, planner_s=planner_s, schedule_s=returned_s - t0)
        # The plan's shape when vLLM ran the plan as planned (the common case, and cheaper).
        shape = plan.shape if plan is not None and exact else batch_shape(output, self.requests)
        predicted_s = self.calibrator.model.predict_s(shape)
        self._pending.append(_PendingStep(output, t0, shape, predicted_s, record))
        return output

    def update_from_output(self, scheduler_output: SchedulerOutput, model_runner_output: Any) -> Any:
        step = self._pop_pending(scheduler_output)
        result = super().update_from_output(scheduler_output, model_runner_output)
        t = time.perf_counter()
        if step is not None and step.shape.num_tokens == 0 and step.record is not None:
            self.accelgen_stats.record_step(step.record)
        elif step is not None:
            # What a token's gap is made of: the step's schedule(), its forward pass and
            # this update, which emits its tokens. With async scheduling the next
            # schedule() runs before this update: the step starts when the last one ended.
            measured_s = t - max(step.started_s, self._last_update_end_s)
            self.accelgen_stats.record_timing(predicted_s=step.predicted_s, measured_s=measured_s)
            if step.record is not None:
                step.record.update(
                    model_predicted_s=step.predicted_s,
                    measured_s=measured_s,
                    shape=step.shape.to_list(),
                )
                self.accelgen_stats.record_step(step.record)
            if self.calibrator.add(step.shape, measured_s):
                if self.planner is not None:
                    self.planner.set_latency_model(self.calibrator.model)
                self._publish_calibration()
        self._last_update_end_s = time.perf_counter()
        self._last_token_wall_s = time.time()
        self.accelgen_stats.maybe_write()
        return result

    def shutdown(self) -> None:
        self._publish_calibration()
        self.accelgen_stats.close()
        super().shutdown()

    # ---------------------------------------------------------------- internals

    def _sync_one(self, request: VllmRequest, mirror: Request) -> None:
        # Async scheduling: tokens in flight count as emitted (their KV is scheduled).
        outputs = request.num_output_tokens + request.num_output_placeholders
        if outputs > mirror.num_output_tokens:
            mirror.last_token_s = self._last_token_wall_s
        mirror.num_output_tokens = outputs
        mirror.num_computed_tokens = request.num_computed_tokens
        running = request.status == RequestStatus.RUNNING
        mirror.num_blocks = blocks_for(request.num_computed_tokens, self.block_size) if running else 0

    def _sync(self, planner: Policy) -> None:
        """Make the planner's view equal vLLM's: token counts, KV, running or waiting."""
        in_planner = {id(m) for m in planner.running}
        mirrors = self._mirrors
        block_size = self.block_size
        token_s = self._last_token_wall_s
        matched = 0
        for r in self.running:
            mirror = mirrors.get(r.request_id)
            if mirror is None:
                continue
            # NOTE: _sync_one inlined for running requests (the per-step hot loop).
            outputs = r.num_output_tokens + r.num_output_placeholders
            if outputs > mirror.num_output_tokens:
                mirror.last_token_s = token_s
            mirror.num_output_tokens = outputs
            computed = r.num_computed_tokens
            mirror.num_computed_tokens = computed
            mirror.num_blocks = -(-computed // block_size)
            if id(mirror) in in_planner:
                matched += 1
            else:
                # Admitted by vLLM without the plan (only on a mismatch): adopt it.
                planner.abort(mirror.request_id)
                planner.running.append(mirror)
        if matched == len(in_planner):
            # Every request the planner has running, vLLM has running (the common case).
            planner.free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
            return
        vllm_running = {r.request_id for r in self.running}
        for mirror in list(planner.running):
            if mirror.request_id in vllm_running:
                continue
            request = self.requests.get(mirror.request_id)
            if request is not None and request.status == RequestStatus.PREEMPTED:
                # Preempted by vLLM itself (its KV view differed): recompute it later.
                planner.requeue(mirror, preempted=True)
                self.accelgen_stats.preemptions_by_tier[mirror.tier.name] += 1
                self.accelgen_stats.engine_preemptions_by_tier[mirror.tier.name] += 1
            else:
                # A planned admission vLLM did not carry out: back to the queue as it was.
                planner.requeue(mirror, num_computed_tokens=request.num_computed_tokens if request else 0)
                self.accelgen_stats.num_unexecuted_admissions += 1
        # NOTE: last: requeue() returns the mirrors' blocks to the planner's count.
        planner.free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()

    def _steer(self, plan: IterationPlan) -> tuple[list[VllmRequest], list[VllmRequest], dict[str, int]]:
        """Set vLLM up to execute ``plan``.

        Returns:
            The waiting and the running requests set aside for this step, and the
            planned tokens by request id.
        """
        for victim in plan.preempted:
            r = self.requests.get(victim.request_id)
            if r is not None and r.status == RequestStatus.RUNNING:
                self.running.remove(r)
                self._preempt_request(r, time.monotonic())
                self.accelgen_stats.preemptions_by_tier[victim.tier.name] += 1
        if plan.dropped:
            dropped_ids = [m.request_id for m in plan.dropped]
            self.finish_requests(dropped_ids, RequestStatus.FINISHED_ABORTED)
        planned: dict[str, int] = {}
        full: list[VllmRequest] = []
        cut: list[VllmRequest] = []
        for chunk in plan.chunks:
            r = self.requests.get(chunk.request.request_id)
            if r is None:
                continue
            n = planned[r.request_id] = chunk.num_tokens
            if n == 1:  # a decode (or a one-token tail): never cut
                full.append(r)
                continue
            need = r.num_tokens_with_spec + r.num_output_placeholders - r.num_computed_tokens
            (cut if n < need else full).append(r)
        order = full + cut
        running_ids = {r.request_id for r in self.running}
        in_plan = set(planned)
        # Unplanned running requests are set aside too: vLLM serves running before
        # waiting, so they would take budget the plan gave to admissions.
        hidden_running = [r for r in self.running if r.request_id not in in_plan]
        self.running = [r for r in order if r.request_id in running_ids]
        hidden_waiting: list[VllmRequest] = []
        admissions = [r for r in order if r.request_id not in running_ids]
        if admissions:
            # NOTE: O(queue) — only in steps that admit; otherwise the planned running
            # requests use up the whole budget before vLLM looks at the queue.
            waiting_all = list(self.waiting)
            self.waiting.remove_requests(waiting_all)
            hidden_waiting = [r for r in waiting_all if r.request_id not in in_plan]
            was_waiting = {r.request_id for r in waiting_all}
            for r in admissions:
                if r.request_id in was_waiting:
                    self.waiting.add_request(r)
        self.max_num_scheduled_tokens = min(sum(planned.values()), self._cap_tokens)
        if len(cut) == 1:
            size = planned[cut[0].request_id]
            needs = (r.num_tokens - r.num_computed_tokens for r in full)
            if all(n <= size for n in needs):
                # vLLM caps every request's chunk at this threshold: only the cut one exceeds it.
                self.scheduler_config.long_prefill_token_threshold = size
        return hidden_waiting, hidden_running, planned

    def _record(
        self,
        plan: IterationPlan,
        output: SchedulerOutput,
        planned: dict[str, int],
        exact: bool,
        *,
        planner_s: float,
        schedule_s: float,
    ) -> dict[str, Any] | None:
        """Count the step; return its step-log record (None when there is no log)."""
        stats = self.accelgen_stats
        stats.num_steps += 1
        stats.planner_s.append(planner_s)
        stats.schedule_s.append(schedule_s)
        stats.budget_tokens.append(plan.budget_tokens)
        stats.last_budget_tokens = plan.budget_tokens
        if plan.is_empty:
            stats.num_empty_plans += 1
        if not exact:
            stats.num_inexact_steps += 1
        if stats._log is None:
            return None
        running_by_tier: dict[str, int] = {}
        for r in self.running:
            m = self._mirrors.get(r.request_id)
            if m is not None:
                running_by_tier[m.tier.name] = running_by_tier.get(m.tier.name, 0) + 1
        return {
            "step": stats.num_steps,
            "t_s": time.time(),
            "budget_tokens": plan.budget_tokens,
            "planned_tokens": sum(planned.values()),
            "scheduled_tokens": output.total_num_scheduled_tokens,
            "exact": exact,
            "predicted_s": plan.predicted_s,
            "planner_s": planner_s,
            "schedule_s": schedule_s,
            "preempted": {m.request_id: m.tier.name for m in plan.preempted},
            "running_by_tier": running_by_tier,
            "num_waiting": len(self.waiting),
            "scheduled": dict(output.num_scheduled_tokens),
            "planned": None if exact else planned,
        }

    def _record_stock(self, output: SchedulerOutput, *, schedule_s: float) -> dict[str, Any] | None:
        stats = self.accelgen_stats
        stats.num_steps += 1
        stats.schedule_s.append(schedule_s)
        preempted = {
            rid: self._mirrors[rid].tier.name for rid in output.preempted_req_ids or () if rid in self._mirrors
        }
        for tier in preempted.values():
            stats.preemptions_by_tier[tier] += 1
        if stats._log is None:
            return None
        return {
            "step": stats.num_steps,
            "t_s": time.time(),
            "scheduled_tokens": output.total_num_scheduled_tokens,
            "schedule_s": schedule_s,
            "preempted": preempted,
            "scheduled": dict(output.num_scheduled_tokens),
        }

    def _pop_pending(self, output: SchedulerOutput) -> _PendingStep | None:
        for i, step in enumerate(self._pending):
            if step.output is output:
                del self._pending[i]
                return step
        return None

    def _publish_calibration(self) -> None:
        self.accelgen_stats.calibration = self.calibrator.report()
        self.accelgen_stats.maybe_write(force=True)


class AccelGenScheduler(_AccelGenMixin, Scheduler):
    """AccelGen over vLLM's synchronous ``Scheduler`` (CPU; GPU with async scheduling off)."""


class AccelGenAsyncScheduler(_AccelGenMixin, AsyncScheduler):
    """AccelGen over vLLM's ``AsyncScheduler`` (the GPU default, async scheduling on)."""


__all__ = ["STOCK_POLICY", "AccelGenAsyncScheduler", "AccelGenScheduler"]
