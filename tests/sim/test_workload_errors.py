"""Bad workload files: one clear line naming the file and field, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelgen.cli import main
from tests.support.factories import SMALL_WORKLOAD as SMALL


def run_cli(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["bench", "sim", str(path), "--quiet", *extra])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("policies: [accelgen, sarathi, vllm-fcfs, oracle]", "policies: [accelgen, magic]", "policies[1]"),
        ("tier: interactive}", "tier: premium}", "sources[0].tier"),
        ("rate_rps: 3.0", "rate_rps: -3", "arrivals.rate_rps"),
        ("duration_s: 20", "duration_s: 20\ncolour: blue", "colour"),
        ("latency_model: h100-llama-2-7b", "latency_model: tpu-llama", "engine.latency_model"),
        ("tbt_ms: 100}", "tbt_ms: 0}", "tiers.tiers[0].tbt_ms"),
        ("trace: azure_conv_2023.csv", "trace: nope.csv", "sources[0].trace"),
        ("latency_noise: 0.05", "latency_noise: 0.05, blocks: 3", "engine.blocks"),
    ],
)
def test_bad_field_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data_dir: Path, old: str, new: str, field: str
) -> None:
    assert old in SMALL
    path = tmp_path / "w.yaml"
    path.write_text(SMALL.replace(old, new))
    code, err = run_cli(path, capsys, "--data-dir", str(data_dir))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert field in lines[0]
    assert lines[0].startswith("accelgen: error: ")


def test_missing_and_malformed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(tmp_path / "absent.yaml", capsys)
    assert code == 2 and "absent.yaml: file not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    code, err = run_cli(bad, capsys)
    assert code == 2 and "bad.yaml: malformed YAML" in err


def test_csv_missing_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("num_prefill_tokens,other\n10,3\n")
    w = tmp_path / "w.yaml"
    w.write_text(SMALL.replace("trace: azure_conv_2023.csv", f"trace: {csv}"))
    code, err = run_cli(w, capsys, "--data-dir", str(data_dir))
    assert code == 2
    assert "t.csv" in err and "sources[0].trace" in err and "num_decode_tokens" in err


def test_plot_needs_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    w = tmp_path / "w.yaml"
    w.write_text(SMALL)
    code, err = run_cli(w, capsys, "--plot", str(tmp_path / "p.png"), "--data-dir", str(data_dir))
    assert code == 2 and "--plot" in err
