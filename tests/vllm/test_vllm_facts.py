"""What AccelGen relies on in vLLM 0.32.0, asserted on the real CPU engine.

These tests run the engine under ``vllm-stock`` (the adapter passes straight through to
vLLM's own ``Scheduler.schedule``), so what they see is vLLM's behaviour. docs/vllm.md
lists each fact with its place in vLLM's source.
"""

from __future__ import annotations

import pytest

from tests.support.vllm_engine import CAP_TOKENS, Recorder, add, policy, run_until_idle, step

pytestmark = pytest.mark.slow


def test_step_budget_is_max_num_scheduled_tokens_set_before_schedule(engine) -> None:
    s = engine.scheduler
    with policy(engine, "vllm-stock"):
        rid = add(engine, prompt_tokens=500, max_tokens=2)
        try:
            s.max_num_scheduled_tokens = 96
            with Recorder(engine) as rec:
                step(engine)
                step(engine)
        finally:
            s.max_num_scheduled_tokens = CAP_TOKENS
        assert [out.num_scheduled_tokens.get(rid) for out in rec.outputs] == [96, 96]
        with Recorder(engine) as rec:
            step(engine)
        # Back at max_num_batched_tokens the rest of the prompt (308) fits in one chunk.
        assert rec.outputs[0].num_scheduled_tokens[rid] == 500 - 2 * 96


def test_running_list_is_served_front_to_back(engine) -> None:
    s = engine.scheduler
    with policy(engine, "vllm-stock"):
        ids = [add(engine, prompt_tokens=64, max_tokens=12) for _ in range(3)]
        step(engine)  # all three prefill in one step
        step(engine)
        assert {r.request_id for r in s.running} == set(ids)
        try:
            s.max_num_scheduled_tokens = 2  # room for two of the three decodes
            with Recorder(engine) as rec:
                step(engine)
                s.running.reverse()
                step(engine)
        finally:
            s.max_num_scheduled_tokens = CAP_TOKENS
        for before, out in zip(rec.running_before, rec.outputs, strict=True):
            assert set(out.num_scheduled_tokens) == set(before[:2])
        assert rec.running_before[0] == list(reversed(rec.running_before[1]))


def test_extra_args_and_kv_accounting_reach_the_scheduler(engine) -> None:
    s = engine.scheduler
    pool = s.kv_cache_manager.block_pool
    with policy(engine, "vllm-stock"):
        free_before = pool.get_num_free_blocks()
        rid = add(engine, prompt_tokens=300, max_tokens=4, slo_tier="tight", tbt_ms=25)
        request = s.requests[rid]
        assert request.sampling_params.extra_args == {"slo_tier": "tight", "tbt_ms": 25}
        assert request.priority == 0
        step(engine)
        # 300 prompt tokens in blocks of s.block_size (128 on CPU) -> 3 blocks.
        assert s.block_size == 128
        assert pool.get_num_free_blocks() == free_before - 3
        assert len(s.kv_cache_manager.get_block_ids(rid)[0]) == 3
        # "Does not fit" is None, and a failed allocation takes nothing. (Requests are
        # capped at max_model_len, so first take all but one free block away.)
        taken = pool.get_new_blocks(pool.get_num_free_blocks() - 1)
        try:
            assert s.kv_cache_manager.allocate_slots(request, 2 * s.block_size) is None
            assert pool.get_num_free_blocks() == 1
            assert len(s.kv_cache_manager.get_block_ids(rid)[0]) == 3
        finally:
            pool.free_blocks(taken)
        assert pool.get_num_free_blocks() == free_before - 3
    assert pool.get_num_free_blocks() == free_before


def test_stock_preempts_the_last_running_request_and_recomputes_it(engine) -> None:
    """KV for 63 blocks; four 1900-token prompts need 60, then one more block each."""
    s = engine.scheduler
    with policy(engine, "vllm-stock"):
        ids = [add(engine, prompt_tokens=1900, max_tokens=40) for _ in range(4)]
        victim = None
        with Recorder(engine) as rec:
            for _ in range(200):
                step(engine)
                if rec.outputs[-1].preempted_req_ids:
                    victim = next(iter(rec.outputs[-1].preempted_req_ids))
                    break
        assert victim is not None, "the engine never ran out of KV"
        assert victim == rec.running_before[-1][-1] == ids[-1]
        request = s.requests[victim]
        assert request.status.name == "PREEMPTED"
        assert request.num_computed_tokens == 0  # recompute, not swap
        assert request in list(s.waiting)
        finished = run_until_idle(engine)
    assert sorted(finished.values()) == [40, 40, 40, 40]
