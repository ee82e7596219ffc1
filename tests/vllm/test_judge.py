"""The outside judge: vLLM's own benchmark client, verdicts by the project's SLO rule.

The judging and the client orchestration run without vLLM (hand-made results, a fake
client); one slow test runs the real ``vllm bench serve`` against the real server.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from accelgen.bench.judge import JudgeError, TierStream, client_requests, judge, record, run_judge, streams_for
from accelgen.core.tiers import SLOTier, TierSet, parse_tiers
from accelgen.sim.workload import SimRequest
from accelgen.wire import read_engine_stats
from tests.support.vllm_engine import TIERS_YAML

TIERS = TierSet(
    (SLOTier("chat", ttft_slo_s=0.5, tbt_slo_s=0.1), SLOTier("bulk", ttft_slo_s=1.0, tbt_slo_s=0.5)), default="chat"
)


def _result(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """A detailed result of ``vllm bench serve`` (--save-detailed) with these requests."""
    ok = [r for r in requests if not r.get("error")]
    return {
        "start_times": [r["start"] for r in requests],
        "ttfts": [r.get("ttft", 0.0) for r in requests],
        "itls": [r.get("itls", []) for r in requests],
        "output_lens": [r.get("out", 1 + len(r.get("itls", []))) if not r.get("error") else 0 for r in requests],
        "input_lens": [32 for _ in requests],
        "errors": [r.get("error", "") for r in requests],
        "completed": len(ok),
        "failed": len(requests) - len(ok),
        "request_throughput": 2.0,
        "output_throughput": 50.0,
        "p99_itl_ms": 12.5,
    }


def test_judge_applies_the_slo_rule_to_the_clients_timings() -> None:
    gaps = [0.05] * 97
    chat = _result(
        [
            {"start": 100.0, "ttft": 0.2, "itls": [*gaps, 0.05, 0.3]},  # 100 tokens, one late gap: met
            {"start": 100.1, "ttft": 0.2, "itls": [*gaps, 0.3, 0.3]},  # two late gaps: missed
            {"start": 100.2, "ttft": 0.6, "itls": [0.05] * 9},  # first token late: missed
            {"start": 100.3, "error": "Traceback ...\naiohttp.ClientConnectorError: refused"},
            {"start": 100.4, "ttft": 0.1, "itls": [0.05] * 4, "out": 20},  # 20 tokens in 5 chunks: met
        ]
    )
    bulk = _result([{"start": 100.05, "ttft": 0.3, "itls": [0.2, 0.2]}])
    results = {"chat": chat, "bulk": bulk}

    requests = [r for tier, res in results.items() for r in client_requests(tier, res)]
    assert [r.request_id for r in requests] == ["chat-0", "chat-1", "chat-2", "chat-3", "chat-4", "bulk-0"]
    assert requests[0].chunk_times_s[0] == pytest.approx(100.2)
    assert requests[0].chunk_times_s[-1] == pytest.approx(100.2 + 97 * 0.05 + 0.35)
    recorder = record(requests, TIERS)
    assert [recorder.records[r.request_id].met() for r in requests] == [True, False, False, False, True, True]
    assert recorder.records["chat-1"].num_late == 2
    assert recorder.records["chat-4"].num_tokens == 20
    assert recorder.records["chat-0"].arrival_s == 0.0  # t = 0: the first send of any stream

    report = judge(results, tiers=TIERS)
    c = report["tiers"]["chat"]
    assert (c["requests"], c["completed"], c["slo_met"], c["failed"], c["dropped"]) == (5, 4, 2, 1, 1)
    assert (c["late_tokens"], c["missed_ttft"], c["missed_tbt"]) == (3, 1, 1)
    assert c["attainment"] == pytest.approx(2 / 5)
    assert 0.5 < c["ttft_p99_s"] <= 0.6  # the late first token
    assert c["client"]["p99_itl_ms"] == 12.5  # the client's own number, as it reported it
    assert report["tiers"]["bulk"]["slo_met"] == 1
    assert (report["requests"], report["slo_met"], report["failed"], report["late_tokens"]) == (6, 3, 1, 3)
    assert report["goodput_rps"] > 0
    assert (c["output_tokens"], report["output_tokens"]) == (230, 233)  # 100 + 100 + 10 + 20; bulk: 3
    assert report["client"]["request_throughput"] == 4.0  # two streams side by side
    assert report["client"]["completed"] == 5
    assert list(report["errors"]) == ["chat-3"]
    assert "ClientConnectorError" in report["errors"]["chat-3"]


FAKE_CLIENT = """\
import json, os, sys, time
from pathlib import Path

args = sys.argv[3:]  # after -c SCRIPT
value = lambda flag: args[args.index(flag) + 1]
mode = os.environ["FAKE_CLIENT_MODE"]
print("fake client", mode, flush=True)
if mode == "fail":
    print("tokenizer exploded", flush=True)
    sys.exit(3)
if mode == "hang":
    Path(os.environ["FAKE_CLIENT_PIDS"], str(os.getpid())).touch()
    time.sleep(600)
ready, go = Path(os.environ["ACCELGEN_JUDGE_READY"]), Path(os.environ["ACCELGEN_JUDGE_GO"])
ready.touch()
ready_s = time.monotonic()
while not go.exists():
    time.sleep(0.005)
released_s = time.monotonic()
n, out = int(value("--num-prompts")), int(value("--random-output-len"))
now = time.perf_counter()
result = {
    "start_times": [now + 0.01 * i for i in range(n)], "ttfts": [0.05] * n, "itls": [[0.01] * (out - 1)] * n,
    "output_lens": [out] * n, "input_lens": [int(value("--random-input-len"))] * n, "errors": [""] * n,
    "completed": n, "failed": 0, "request_throughput": 1.0, "output_throughput": 1.0 * out,
}
Path(value("--result-dir"), value("--result-filename")).write_text(json.dumps(result))
info = {"argv": args, "ready_s": ready_s, "released_s": released_s, "done_s": time.monotonic()}
Path(value("--result-dir"), "info-" + value("--result-filename")).write_text(json.dumps(info))
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """An executable that stands in for ``python -c CLIENT_MAIN ARGS`` (no vLLM)."""
    path = tmp_path / "fake-python"
    path.write_text(f"#!{sys.executable}\n{FAKE_CLIENT}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _run(fake_python: Path, workdir: Path, **kw: Any) -> dict[str, Any]:
    streams = [
        TierStream("chat", 3, 4.0, 64, 8, extra_body={"vllm_xargs": {"slo_tier": "chat"}}),
        TierStream("bulk", 2, math.inf, 300, 5, range_ratio=0.5, extra_body={"priority": 1}),
    ]
    return run_judge(
        base_url="http://127.0.0.1:9",
        model="tiny",
        tokenizer=Path("/nowhere/tokenizer"),
        streams=streams,
        tiers=TIERS,
        workdir=workdir,
        seed=7,
        python=str(fake_python),
        **({"timeout_s": 60.0} | kw),
    )


def test_run_judge_releases_the_clients_together_after_the_warmup(
    fake_python: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CLIENT_MODE", "ok")
    warmup = TierStream("chat", 2, math.inf, 16, 4)
    report = _run(fake_python, tmp_path / "wd", warmup=warmup)

    assert (report["requests"], report["completed"], report["slo_met"], report["failed"]) == (5, 5, 5, 0)
    assert report["tiers"]["bulk"]["requests"] == 2
    assert set(report["client_results"]) == {"chat", "bulk"}
    info = {n: json.loads((tmp_path / "wd" / f"info-{n}.json").read_text()) for n in ("chat", "bulk", "judge-warmup")}
    released = [info[n]["released_s"] for n in ("chat", "bulk")]
    assert max(info[n]["ready_s"] for n in ("chat", "bulk")) <= min(released)
    assert info["judge-warmup"]["done_s"] <= min(released)
    chat, bulk = info["chat"]["argv"], info["bulk"]["argv"]
    assert json.loads(chat[chat.index("--extra-body") + 1]) == {"vllm_xargs": {"slo_tier": "chat"}}
    assert json.loads(bulk[bulk.index("--extra-body") + 1]) == {"priority": 1}
    assert bulk[bulk.index("--request-rate") + 1] == "inf"
    assert bulk[bulk.index("--random-range-ratio") + 1] == "0.5"
    assert [a[a.index("--seed") + 1] for a in (chat, bulk)] == ["7", "8"]
    assert {"--ignore-eos", "--save-detailed", "--disable-tqdm"} <= set(chat)
    assert chat[chat.index("--num-warmups") + 1] == "0"


def test_a_failed_client_names_its_tier_and_output(
    fake_python: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CLIENT_MODE", "fail")
    with pytest.raises(JudgeError, match=r"tier '(chat|bulk)' exited with 3 before sending") as err:
        _run(fake_python, tmp_path / "wd")
    assert "tokenizer exploded" in str(err.value)


def test_a_client_past_the_timeout_is_stopped(
    fake_python: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("FAKE_CLIENT_MODE", "hang")
    monkeypatch.setenv("FAKE_CLIENT_PIDS", str(pids))
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match=r"tier '(chat|bulk)' not ready after 2 s"):
        _run(fake_python, tmp_path / "wd", timeout_s=2.0)
    assert time.monotonic() - t0 < 30
    started = [int(p.name) for p in pids.iterdir()]
    assert len(started) == 2
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_vllm_bench_serve_streams_are_all_judged(server: Any, tiny_model: Path, tmp_path: Path) -> None:
    """Two tiers' streams from the real client against the real AccelGen server."""
    tiers = parse_tiers(yaml.safe_load(TIERS_YAML))
    before = read_engine_stats(server.stats_file).requests_by_tier if server.stats_file.exists() else {}
    xargs = lambda tier: {"vllm_xargs": {"slo_tier": tier}}  # noqa: E731
    streams = [
        TierStream("tight", 4, 4.0, 48, 12, extra_body=xargs("tight")),
        TierStream("loose", 3, 2.0, 200, 16, range_ratio=0.25, extra_body=xargs("loose")),
    ]
    report = run_judge(
        base_url=server.base_url,
        model="tiny",
        tokenizer=tiny_model,
        streams=streams,
        tiers=tiers,
        workdir=tmp_path,
        seed=0,
        timeout_s=600,
        warmup=TierStream("loose", 2, math.inf, 32, 4, extra_body=xargs("loose")),
    )

    # Every request is accounted for and judged, overall and per tier.
    assert report["failed"] == 0, report["errors"]
    assert (report["requests"], report["completed"]) == (7, 7)
    for s in streams:
        t = report["tiers"][s.tier]
        assert (t["requests"], t["completed"], t["client"]["completed"]) == (s.num_prompts,) * 3
        assert t["slo_met"] + t["missed_ttft"] + t["missed_tbt"] == t["completed"]
        detail = json.loads(Path(report["client_results"][s.tier]).read_text())
        assert t["output_tokens"] == sum(detail["output_lens"])  # every token judged
    assert report["tiers"]["batch"]["requests"] == 0
    assert report["client"]["request_throughput"] > 0
    # The tiers reached AccelGen's scheduler: 4 tight, 3 loose and 2 warm-up loose requests.
    deadline = time.monotonic() + 30
    while True:
        after = read_engine_stats(server.stats_file).requests_by_tier
        grown = {k: after.get(k, 0) - before.get(k, 0) for k in ("tight", "loose")}
        if grown == {"tight": 4, "loose": 5} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert grown == {"tight": 4, "loose": 5}


def test_streams_carry_each_tiers_load_and_stay_within_its_lengths() -> None:
    reqs = [SimRequest(f"c{i}", i * 0.5, 100 + 10 * i, 20, "chat") for i in range(5)]  # prompts 100..140
    reqs.append(SimRequest("d", 1.0, 3000, 40, "bulk"))
    streams = streams_for(reqs, TIERS, duration_s=10.0, extra_body=lambda t: {"vllm_xargs": {"slo_tier": t}})
    chat, bulk = streams
    assert (chat.tier, chat.num_prompts, chat.rate_rps, chat.input_tokens, chat.output_tokens) == (
        "chat",
        5,
        0.5,
        120,
        20,
    )
    assert chat.range_ratio == 0.0  # outputs all 20: no spread beyond them
    assert (bulk.num_prompts, bulk.input_tokens, bulk.range_ratio) == (1, 3000, 0.0)
    assert bulk.extra_body == {"vllm_xargs": {"slo_tier": "bulk"}}
