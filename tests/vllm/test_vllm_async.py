"""AccelGenAsyncScheduler: the same adapter over vLLM's AsyncScheduler.

The CPU platform forces ``async_scheduling=False``, so the engine loop here is the
synchronous one; what runs is AsyncScheduler's own bookkeeping (output placeholders
added at schedule time, removed at update), which the adapter's mirror must account for.
A fresh engine in a subprocess: one in-process engine per test process is the rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":
        llm = LLM(
            model=sys.argv[1], load_format="dummy", max_model_len=2048,
            max_num_batched_tokens=512, num_gpu_blocks_override=32,
            kv_cache_memory_bytes=64 << 20, enforce_eager=True, dtype="float32",
            enable_prefix_caching=False,
            scheduler_cls="accelgen.vllm.AccelGenAsyncScheduler",
        )
        s = llm.llm_engine.engine_core.engine_core.scheduler
        params = [
            SamplingParams(max_tokens=n, ignore_eos=True, extra_args={"slo_tier": t})
            for n, t in ((20, "tight"), (7, "loose"), (33, "tight"), (12, "loose"))
        ]
        prompts = ["word " * n for n in (450, 30, 150, 600)]
        outs = llm.generate(prompts, params, use_tqdm=False)
        print("RESULT", json.dumps({
            "mro": [c.__name__ for c in type(s).__mro__],
            "outputs": [len(o.outputs[0].token_ids) for o in outs],
            "inexact": s.accelgen_stats.num_inexact_steps,
            "steps": s.accelgen_stats.num_steps,
            "by_tier": dict(s.accelgen_stats.requests_by_tier),
            "left": len(s._mirrors) + s.planner.num_unfinished,
        }))
    """
)


def test_async_scheduler_variant_runs_in_the_engine(vllm_available: None, tiny_model: Path, workdir: Path) -> None:
    script = workdir / "async_engine.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "ACCELGEN_TIERS": str(workdir / "tiers.yaml"),
    }
    for key in ("ACCELGEN_STATS_FILE", "ACCELGEN_STEP_LOG", "ACCELGEN_CALIBRATION_FILE"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["mro"][:3] == ["AccelGenAsyncScheduler", "_AccelGenMixin", "AsyncScheduler"]
    assert result["outputs"] == [20, 7, 33, 12]
    assert result["by_tier"] == {"tight": 2, "loose": 2}
    assert result["left"] == 0
    assert result["inexact"] <= 0.1 * result["steps"], result
