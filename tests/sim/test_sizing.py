"""Relative workloads (``sizing:``) made absolute from a hand-made engine model.

No engine: the models are written down, the traces are tiny CSVs, and the command-line
tests replace the probe with one that "measures" a given model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from accelgen.bench import probe, sizing
from accelgen.cli import main
from accelgen.core.errors import ConfigError
from accelgen.core.latency import FittedLatencyModel
from accelgen.core.policies import make_policy
from accelgen.sim.engine import simulate
from accelgen.sim.traces import read_trace
from accelgen.sim.workload import Workload, capped_outputs, engine_limits, generate_requests, parse_workload

# A CPU-like engine: 5 ms per step, 0.1 ms per token, 0.4 ms more per decode, attention.
MODEL = FittedLatencyModel(coefficients=(0.005, 1.0e-4, 4.0e-4, 8.0e-8, 7.0e-7), name="hand-made")
# The same engine with prefill 3x as expensive and decodes unchanged.
SLOW_PREFILL = FittedLatencyModel(coefficients=(0.005, 3.0e-4, 2.0e-4, 2.4e-7, 7.0e-7), name="slow-prefill")


def _write_traces(folder: Path) -> tuple[Path, Path]:
    chat, docs = folder / "chat.csv", folder / "docs.csv"
    chat.write_text(
        "num_prefill_tokens,num_decode_tokens\n"
        + "".join(f"{60 + 97 * i % 1900},{20 + 13 * i % 200}\n" for i in range(50))
    )
    docs.write_text(
        "num_prefill_tokens,num_decode_tokens\n"
        + "".join(f"{2500 + 31 * i % 1500},{100 + 7 * i % 150}\n" for i in range(50))
    )
    return chat, docs


def _raw(folder: Path, **changes: Any) -> dict[str, Any]:
    """A relative chat + documents workload (as parsed from YAML); ``changes`` by dotted path."""
    chat, docs = _write_traces(folder)
    raw: dict[str, Any] = {
        "name": "relative-test",
        "seed": 5,
        "duration_s": 30,
        "max_tokens": 128,
        "arrivals": {"process": "poisson"},
        "sizing": {"tight_tbt_decode_steps": 8, "load": 0.5},
        "sources": [
            {"trace": str(chat), "weight": 0.65, "tier": "interactive", "max_prompt_tbts": 0.5},
            {"trace": str(docs), "weight": 0.35, "tier": "summarize", "max_prompt_tbts": 3},
        ],
        "tiers": {
            "default_tier": "interactive",
            "tiers": [
                {"name": "interactive", "ttft_ms": 1000, "tbt_ms": 100},
                {"name": "summarize", "ttft_ms": 5000, "tbt_ms": 250, "priority": 1},
                {"name": "batch", "deadline_s": 60, "priority": 2},
            ],
        },
        "engine": {
            "latency_model": "h100-llama-2-7b",
            "num_kv_blocks": 1024,
            "block_size_tokens": 128,
            "max_num_batched_tokens": 2048,
            "max_num_seqs": 64,
        },
        "scheduler": {"safety_margin_s": 0.025},
        "policies": ["accelgen", "vllm-fcfs"],
    }
    for path, value in changes.items():
        *parents, key = path.split(".")
        node: Any = raw
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            node.pop(key)
        else:
            node[key] = value
    return raw


def _size(workload: Workload, model: FittedLatencyModel) -> tuple[Workload, dict[str, Any]]:
    traces = [read_trace(Path(s.trace)) for s in workload.sources]
    limits = engine_limits(workload, num_kv_blocks=1023)
    return sizing.size_workload(workload, model, limits, traces=traces, max_request_tokens=8192)


def test_decode_step_and_measurement_are_predictions() -> None:
    m = sizing.measure_engine(MODEL, max_num_batched_tokens=2048)
    # 4 decodes at 128 tokens: 5 ms + 4 x (0.1 + 0.4) ms + 512 KV tokens x 0.7 us.
    assert m.decode_step_s == pytest.approx(0.005 + 4 * 5e-4 + 512 * 7e-7)
    assert m.decode_request_s == pytest.approx(5e-4 + 128 * 7e-7)
    assert m.full_prefill_s == pytest.approx(0.005 + 2048 * 1e-4 + 8e-8 * 2048 * 1024)
    assert m.prefill_context_token_s == pytest.approx(8e-8 * 2048)
    assert set(m.to_dict()) >= {"decode_step_s", "prefill_token_s", "full_prefill_s"}


def test_absolute_workload_is_returned_as_it_is(tmp_path: Path) -> None:
    workload = parse_workload(_raw(tmp_path, sizing=None, **{"arrivals.rate_rps": 2.0}, **_absolute_caps()))
    assert _size(workload, MODEL) == (workload, {})


def _absolute_caps() -> dict[str, Any]:
    return {"sources.0.max_prompt_tbts": None, "sources.1.max_prompt_tbts": None}


def test_a_three_times_slower_engine_gets_three_times_every_time(tmp_path: Path) -> None:
    workload = parse_workload(_raw(tmp_path))
    fast, fast_derived = _size(workload, MODEL)
    slow, slow_derived = _size(workload, MODEL.scaled(3.0))
    assert fast.sizing is None and slow.sizing is None
    assert fast_derived["tight_tbt_s"] == pytest.approx(
        8 * sizing.measure_engine(MODEL, max_num_batched_tokens=2048).decode_step_s
    )
    assert slow_derived["tight_tbt_s"] == pytest.approx(3 * fast_derived["tight_tbt_s"])
    for a, b in zip(fast.tiers, slow.tiers, strict=True):
        for key in ("ttft_slo_s", "tbt_slo_s", "deadline_s"):
            value = getattr(a, key)
            assert getattr(b, key) == (None if value is None else pytest.approx(3 * value)), (a.name, key)
    assert slow.scheduler.safety_margin_s == pytest.approx(3 * fast.scheduler.safety_margin_s)
    assert slow.scheduler.gamma_s == pytest.approx(3 * fast.scheduler.gamma_s)
    # The written proportions hold: the summarize tier's TBT is 2.5 chat TBTs.
    assert fast.tiers.get("summarize").tbt_slo_s == pytest.approx(2.5 * fast_derived["tight_tbt_s"])
    # Token counts do not change when every cost scales alike; the rate does.
    assert [s.max_prompt_tokens for s in fast.sources] == [s.max_prompt_tokens for s in slow.sources]
    assert slow_derived["capacity_rps"] == pytest.approx(fast_derived["capacity_rps"] / 3, rel=1e-6)
    assert fast.rate_rps is not None and slow.rate_rps is not None
    assert slow.rate_rps == pytest.approx(fast.rate_rps / 3, rel=1e-6)
    assert fast.rate_rps == pytest.approx(0.5 * fast_derived["capacity_rps"])


def test_slower_prefill_gives_shorter_documents_at_the_same_tbt(tmp_path: Path) -> None:
    workload = parse_workload(_raw(tmp_path))
    fast, fast_derived = _size(workload, MODEL)
    slow, slow_derived = _size(workload, SLOW_PREFILL)
    assert slow_derived["tight_tbt_s"] == pytest.approx(fast_derived["tight_tbt_s"])  # decodes cost the same
    fast_doc, slow_doc = fast.sources[1].max_prompt_tokens, slow.sources[1].max_prompt_tokens
    assert fast_doc is not None and slow_doc is not None
    assert slow_doc < fast_doc
    for model, derived, doc in ((MODEL, fast_derived, fast_doc), (SLOW_PREFILL, slow_derived, slow_doc)):
        budget = 3 * derived["tight_tbt_s"]
        assert sizing.prefill_s(model, doc) <= budget < sizing.prefill_s(model, doc + 1)
        assert derived["sources"][1]["prefill_s"] == pytest.approx(sizing.prefill_s(model, doc))


def test_a_prefill_longer_than_one_step_is_sized_as_the_engine_chunks_it(tmp_path: Path) -> None:
    """A fast engine prefills more than max_num_batched_tokens in a few TBTs: its documents
    are longer prompts, prefilled in steps of that many tokens (not a refused workload)."""
    cap = 2048
    sized, derived = _size(parse_workload(_raw(tmp_path, **{"sources.1.max_prompt_tbts": 8})), MODEL)
    doc = sized.sources[1].max_prompt_tokens
    assert doc is not None and cap < doc <= 8192 - 128
    budget = 8 * derived["tight_tbt_s"]
    assert sizing.chunked_prefill_s(MODEL, doc, cap=cap) <= budget < sizing.chunked_prefill_s(MODEL, doc + 1, cap=cap)
    # Past one step every chunk pays its own step and the context before it.
    chunks = sizing.prefill_s(MODEL, cap) + sizing.prefill_s(MODEL, doc - cap, context_tokens=cap)
    assert sizing.chunked_prefill_s(MODEL, doc, cap=cap) == pytest.approx(chunks)
    assert chunks > sizing.prefill_s(MODEL, doc)
    assert derived["sources"][1]["prefill_s"] == pytest.approx(chunks)
    # Within one step it is the one unchunked prefill.
    assert sizing.chunked_prefill_s(MODEL, cap, cap=cap) == sizing.prefill_s(MODEL, cap)


def test_the_same_load_gives_the_same_contention(tmp_path: Path) -> None:
    # A fixed request count: the same requests for both engines, arrivals 3x as far apart.
    workload = parse_workload(_raw(tmp_path, duration_s=None, num_requests=120))
    results = {}
    for label, model in (("fast", MODEL), ("slow", MODEL.scaled(3.0))):
        sized, _ = _size(workload, model)
        requests = capped_outputs(sized, generate_requests(sized, [read_trace(Path(s.trace)) for s in sized.sources]))
        limits = engine_limits(sized, num_kv_blocks=1023)
        for name in ("accelgen", "vllm-fcfs"):
            policy = make_policy(name, tiers=sized.tiers, latency_model=model, limits=limits, config=sized.scheduler)
            recorder, _ = simulate(policy, requests, tiers=sized.tiers, model=model, max_tokens=sized.max_tokens)
            results[label, name] = recorder.summary(), requests
    for name in ("accelgen", "vllm-fcfs"):
        (fast, fast_requests), (slow, slow_requests) = results["fast", name], results["slow", name]
        assert [r.prompt_tokens for r in fast_requests] == [r.prompt_tokens for r in slow_requests]
        assert slow_requests[-1].arrival_s == pytest.approx(3 * fast_requests[-1].arrival_s)
        assert slow["attainment"] == pytest.approx(fast["attainment"], abs=0.02), name
        assert slow["token_attainment"] == pytest.approx(fast["token_attainment"], abs=0.01), name
        assert slow["tbt_p99_s"] == pytest.approx(3 * fast["tbt_p99_s"], rel=0.05), name
    # Contention exists: stock vLLM's whole document prefills cost chat requests their SLO.
    assert results["fast", "vllm-fcfs"][0]["tiers"]["interactive"]["attainment"] < 1.0


def test_derived_values_name_their_sources(tmp_path: Path) -> None:
    _, derived = _size(parse_workload(_raw(tmp_path)), MODEL)
    assert derived["relative"] == {
        "tight_tbt_decode_steps": 8.0,
        "load": 0.5,
        "sources[0].max_prompt_tbts": 0.5,
        "sources[1].max_prompt_tbts": 3.0,
    }
    assert set(derived["measured"]) >= {"decode_step_s", "prefill_token_s", "prefill_context_token_s"}
    assert set(derived["tiers"]) == {"interactive", "summarize", "batch"}
    assert derived["capacity_requests"] == sizing.CAPACITY_REQUESTS
    lines = sizing.describe(derived)
    assert any("decode step" in line for line in lines) and any("capacity" in line for line in lines)


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"sizing.tight_tbt_decode_steps": 0.5}, "sizing.tight_tbt_decode_steps", "below one decode step"),
        ({"sources.1.max_prompt_tbts": 0.001}, "sources[1].max_prompt_tbts", "below a one-token prefill"),
        ({"sources.1.max_prompt_tbts": 500}, "sources[1].max_prompt_tbts", "the longest a request may be"),
        ({"sizing.load": 1e-6}, "sizing.load", "not one arrival"),
    ],
)
def test_a_size_that_cannot_be_met_is_refused(tmp_path: Path, changes: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        _size(parse_workload(_raw(tmp_path, **changes)), MODEL)
    assert info.value.field == field
    assert says in info.value.message and "measured" in info.value.message


# ---------------------------------------------------------------- the command line


@pytest.fixture
def fake_probe(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """``probe.measure`` writes MODEL as the engine's fit instead of starting an engine."""
    from accelgen.vllm.calibration import save_fit

    calls: list[Path] = []

    def measure(cfg: Any, limits: Any, *, log_file: Path, vocab: int, seed: int = 0) -> probe.ProbeResult:
        assert cfg.policy == "vllm-stock" and cfg.calibration_file is not None
        save_fit(cfg.calibration_file, MODEL)
        calls.append(cfg.calibration_file)
        return probe.ProbeResult(
            model=MODEL,
            measurement=sizing.measure_engine(MODEL, max_num_batched_tokens=limits.max_num_batched_tokens),
            calibration_file=cfg.calibration_file,
            num_requests=0,
            wall_s=0.0,
        )

    monkeypatch.setattr(probe, "measure", measure)
    return calls


def _bench_vllm(tmp_path: Path, raw: dict[str, Any], *extra: str) -> tuple[int, str, str]:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"vocab_size": 1000}))
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(raw))
    return _cli(["bench", "vllm", str(path), "--model", str(model), *extra])


def _cli(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _one_error_line(err: str, field: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("accelgen: error: ") and field in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sizing.tight_tbt_decode_steps": 0.5}, "sizing.tight_tbt_decode_steps"),
        ({"sources.0.max_prompt_tbts": 0.001}, "sources[0].max_prompt_tbts"),
        ({"sources.1.max_prompt_tbts": 500}, "sources[1].max_prompt_tbts"),
        ({"sizing.load": 1e-6}, "sizing.load"),
    ],
)
def test_cli_refuses_a_size_that_cannot_be_met(
    tmp_path: Path, fake_probe: list[Path], changes: dict[str, Any], field: str
) -> None:
    code, _, err = _bench_vllm(tmp_path, _raw(tmp_path, **changes), "--measure-only")
    assert code == 2 and fake_probe
    line = _one_error_line(err, field)
    assert "w.yaml" in line and "measured" in line


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sizing.tight_tbt_decode_steps": 0}, "sizing.tight_tbt_decode_steps"),
        ({"sizing.load": -1}, "sizing.load"),
        ({"sizing.colour": "blue"}, "sizing.colour"),
        ({"arrivals.rate_rps": 2.0}, "sizing.load"),
        ({"arrivals.process": "replay"}, "sizing.load"),
        ({"sizing": None, "arrivals.rate_rps": 2.0}, "sources[0].max_prompt_tbts"),
        ({"sources.1.max_prompt_tokens": 1024}, "sources[1].max_prompt_tbts"),
        ({"sources.1.max_prompt_tbts": "3x"}, "sources[1].max_prompt_tbts"),
    ],
)
def test_cli_refuses_a_bad_sizing_field_before_any_engine(
    tmp_path: Path, fake_probe: list[Path], changes: dict[str, Any], field: str
) -> None:
    code, _, err = _bench_vllm(tmp_path, _raw(tmp_path, **changes), "--measure-only")
    assert code == 2 and not fake_probe
    _one_error_line(err, field)


def test_cli_refuses_a_relative_tbt_without_an_online_tier(tmp_path: Path, fake_probe: list[Path]) -> None:
    raw = _raw(tmp_path, **_absolute_caps())
    raw["tiers"] = {"default_tier": "batch", "tiers": [{"name": "batch", "deadline_s": 60}]}
    for source in raw["sources"]:
        source["tier"] = "batch"
    code, _, err = _bench_vllm(tmp_path, raw, "--measure-only")
    assert code == 2
    _one_error_line(err, "sizing.tight_tbt_decode_steps")


def test_bench_sim_refuses_a_relative_workload(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path)))
    code, _, err = _cli(["bench", "sim", str(path), "--quiet"])
    assert code == 2
    assert "accelgen bench vllm" in _one_error_line(err, "sizing")


def test_measure_only_reports_and_writes_the_sized_engine_files(tmp_path: Path, fake_probe: list[Path]) -> None:
    out, workdir = tmp_path / "out.json", tmp_path / "wd"
    code, stdout, err = _bench_vllm(
        tmp_path, _raw(tmp_path), "--measure-only", "--json", str(out), "--workdir", str(workdir)
    )
    assert code == 0, err
    report = json.loads(out.read_text())
    sized = report["sizing"]
    assert report["policies"] == {} and report["rate_rps"] == pytest.approx(sized["rate_rps"])
    assert sized["probe"]["latency_model"] == MODEL.to_dict()
    assert "decode step" in stdout and "capacity" in stdout
    # The AccelGen engines' files carry the sized values, and the probe's fit.
    tiers = yaml.safe_load((workdir / "tiers.yaml").read_text())
    interactive = next(t for t in tiers["tiers"] if t["name"] == "interactive")
    assert interactive["tbt_ms"] == pytest.approx(sized["tight_tbt_s"] * 1e3)
    scheduler = yaml.safe_load((workdir / "scheduler.yaml").read_text())
    assert scheduler["safety_margin_s"] == pytest.approx(sized["scheduler"]["safety_margin_s"])
    assert (workdir / "calibration.json").read_text() == fake_probe[0].read_text()


def test_measure_only_parses_as_a_flag() -> None:
    from accelgen.bench import vllm_cmd

    parser = argparse.ArgumentParser()
    vllm_cmd.add_arguments(parser)
    assert parser.parse_args(["w.yaml", "--measure-only"]).measure_only
    assert not parser.parse_args(["w.yaml"]).measure_only


def test_workload_files_in_the_repository_parse() -> None:
    root = Path(__file__).resolve().parents[2] / "workloads"
    for name in ("chat-docs-relative.yaml", "chat-batch-relative.yaml"):
        workload = parse_workload(yaml.safe_load((root / name).read_text()))
        assert workload.sizing is not None and workload.sizing.load is not None, name
        assert all(s.max_prompt_tbts is not None for s in workload.sources), name
        assert dataclasses.replace(workload, sizing=None).rate_rps is None
