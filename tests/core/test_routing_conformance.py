"""One contract every registered routing policy meets, whatever the pods report.

Parametrized over :data:`accelgen.core.routing.ROUTERS`: a policy added to the registry
is checked here without a line of its own.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accelgen.core.routing import ROUTERS, Decision, PodState, Router, RouteRequest, make_router
from accelgen.core.tiers import SLOTier, TierSet

TIERS = TierSet(
    (
        SLOTier("interactive", ttft_slo_s=1.0, tbt_slo_s=0.1),
        SLOTier("summarize", ttft_slo_s=5.0, tbt_slo_s=0.25),
        SLOTier("batch", deadline_s=300.0),
    ),
    "interactive",
)
NAMES = sorted(ROUTERS)


def router(name: str, seed: int = 0) -> Router:
    return make_router(name, seed=seed, tiers=TIERS)


def request(tier: str = "interactive", prompt_tokens: int = 300, *, arrival_s: float = 0.0) -> RouteRequest:
    t = TIERS.get(tier)
    return RouteRequest(
        tier, prompt_tokens, 100, t.ttft_slo_s, t.tbt_slo_s, t.deadline_s, sheddable=True, arrival_s=arrival_s
    )


def pod(i: int, **fields: object) -> PodState:
    return PodState(name=f"pod-{i}", address=f"10.0.0.{i}:8000", **fields)  # type: ignore[arg-type]


def check(decision: Decision, pods: list[PodState]) -> None:
    """What every decision must be: a ready given pod, or a reasoned non-placement."""
    assert isinstance(decision, Decision)
    if decision.pod is not None:
        chosen = [p for p in pods if p.name == decision.pod]
        assert chosen, f"{decision.pod} is not one of the pods given"
        assert chosen[0].ready, f"{decision.pod} is not ready"
        assert not decision.shed and not decision.queue
    else:
        assert decision.reason, "a request not placed needs a reason"


@st.composite
def pod_states(draw: st.DrawFn, i: int) -> PodState:
    names = [t.name for t in TIERS]
    reported = draw(st.booleans())  # a picker that knows only vLLM's metrics, or the sidecar's too
    by_tier = {n: draw(st.integers(0, 50_000)) for n in names} if reported else {}
    return pod(
        i,
        ready=draw(st.booleans()),
        waiting=draw(st.integers(0, 500)),
        running=draw(st.integers(0, 256)),
        kv_usage=draw(st.floats(0.0, 1.0)),
        headroom={n: draw(st.floats(-1e5, 1e6)) for n in names} if reported and draw(st.booleans()) else {},
        queued_prefill_tokens=sum(by_tier.values()) if reported else None,
        queued_tokens_by_tier=by_tier,
        tightest_tbt_s=draw(st.sampled_from([None, 0.1, 0.25])),
        decode_step_s=draw(st.floats(0.005, 0.3)) if reported else None,
        prefill_s_per_token=draw(st.floats(1e-6, 1e-3)) if reported else None,
        long_prompts=draw(st.integers(0, 3)),
        max_num_seqs=draw(st.sampled_from([0, 256])),
    )


@st.composite
def pools(draw: st.DrawFn) -> list[PodState]:
    n = draw(st.integers(0, 12))
    return [draw(pod_states(i)) for i in range(n)]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(
    pods=pools(),
    tier=st.sampled_from(["interactive", "summarize", "batch"]),
    tokens=st.integers(1, 30_000),
    waited=st.floats(0.0, 400.0),
)
def test_any_pods_any_request(name: str, pods: list[PodState], tier: str, tokens: int, waited: float) -> None:
    decision = router(name).pick(request(tier, tokens), pods, waited)
    check(decision, pods)
    if not any(p.ready for p in pods):
        assert decision.pod is None and not decision.queue


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pods", [[], [pod(0, ready=False), pod(1, ready=False)]], ids=["no pods", "none ready"])
def test_no_ready_pod_is_said_so(name: str, pods: list[PodState]) -> None:
    decision = router(name).pick(request(), pods, 0.0)
    assert decision.pod is None and not decision.queue
    assert "no" in decision.reason and "pod" in decision.reason


@pytest.mark.parametrize("name", NAMES)
def test_never_a_pod_that_is_not_ready(name: str) -> None:
    # The not-ready pods look best on every measure: idle, empty, all headroom.
    pods = [
        pod(
            i,
            ready=i % 2 == 1,
            waiting=0 if i % 2 == 0 else 40,
            running=0 if i % 2 == 0 else 200,
            kv_usage=0.0 if i % 2 == 0 else 0.9,
        )
        for i in range(8)
    ]
    r = router(name)
    for k in range(50):
        decision = r.pick(request(prompt_tokens=100 + k), pods, 0.0)
        check(decision, pods)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_pods", [1, 64])
def test_one_and_sixty_four_pods(name: str, num_pods: int) -> None:
    pods = [pod(i, waiting=i % 5, running=i % 7, kv_usage=(i % 10) / 10) for i in range(num_pods)]
    r = router(name)
    chosen = set()
    for k in range(200):
        decision = r.pick(request(prompt_tokens=50 + k), pods, 0.0)
        check(decision, pods)
        chosen.add(decision.pod)
    assert chosen <= {p.name for p in pods}
    if num_pods == 1:
        assert chosen == {"pod-0"}


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_a_seed(name: str) -> None:
    pods = [pod(i, waiting=i % 3, running=2, kv_usage=0.1 * (i % 4)) for i in range(16)]
    requests = [request(["interactive", "summarize", "batch"][k % 3], 100 + 37 * k) for k in range(100)]

    def decisions(seed: int) -> list[Decision]:
        r = router(name, seed)
        return [r.pick(q, pods, 0.0) for q in requests]

    assert decisions(5) == decisions(5)


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown routing policy 'nope' \(known: .*accelgen"):
        make_router("nope")


def test_a_decision_does_one_thing() -> None:
    with pytest.raises(ValueError, match="not more than one"):
        Decision("pod-0", shed=True)
    with pytest.raises(ValueError, match="not more than one"):
        Decision(None, shed=True, queue=True)
