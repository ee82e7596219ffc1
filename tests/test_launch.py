"""accelgen.launch: the vLLM server's command line from its one config, its lifecycle, ``accelgen serve``."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from accelgen.cli import build_parser
from accelgen.launch import (
    VllmServer,
    VllmServerConfig,
    embedded_config,
    serve_command,
    vllm_server_command,
    vllm_server_env,
)
from accelgen.process import StartError, http_ok
from accelgen.wire import SCHEDULER_CLS

# Stands in for an interpreter with vLLM: answers /health on the --port it is given.
FAKE_SERVER = """\
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
print("fake vLLM", " ".join(sys.argv[1:]), flush=True)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _value(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_the_embedded_tiny_engine_runs_accelgen_with_the_sidecars_settings(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")  # the tiny model, already built
    tiers, stats_file = tmp_path / "tiers.yaml", tmp_path / "stats.json"
    cfg = embedded_config(
        None, tiers_file=tiers, stats_file=stats_file, extra_args=["--max-num-seqs", "8"], tiny_model_dir=tmp_path
    )
    cmd = vllm_server_command(cfg, port=8001, python="py")
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert _value(cmd, "--model") == str(tmp_path) and _value(cmd, "--served-model-name") == "tiny"
    assert (_value(cmd, "--host"), _value(cmd, "--port")) == ("127.0.0.1", "8001")
    assert _value(cmd, "--max-model-len") == "4096" and _value(cmd, "--kv-cache-memory-bytes") == str(256 << 20)
    assert _value(cmd, "--scheduler-cls") == SCHEDULER_CLS and _value(cmd, "--load-format") == "dummy"
    assert {"--enforce-eager", "--disable-uvicorn-access-log"} <= set(cmd)
    for left_to_vllm in ("--max-num-batched-tokens", "--scheduling-policy", "--no-enable-prefix-caching"):
        assert left_to_vllm not in cmd
    assert cmd[-2:] == ["--max-num-seqs", "8"]  # the user's flags last: they win
    env = vllm_server_env(cfg, {"ACCELGEN_SCHEDULER_CONFIG": "/mine.yaml", "ACCELGEN_POLICY": "edf", "PATH": "/b"})
    # The sidecar's own ACCELGEN_* settings reach its engine; no policy is imposed.
    assert (env["ACCELGEN_SCHEDULER_CONFIG"], env["ACCELGEN_POLICY"], env["PATH"]) == ("/mine.yaml", "edf", "/b")
    assert env["ACCELGEN_TIERS"] == str(tiers) and env["ACCELGEN_STATS_FILE"] == str(stats_file)
    assert "ACCELGEN_POLICY" not in vllm_server_env(cfg, {})


def test_an_embedded_engine_of_a_given_model_keeps_vllms_defaults(tmp_path: Path) -> None:
    cmd = vllm_server_command(embedded_config(tmp_path, tiers_file=None, stats_file=None), port=1)
    flags = [a for a in cmd if a.startswith("--")]
    assert flags == ["--model", "--host", "--port", "--load-format", "--scheduler-cls", "--disable-uvicorn-access-log"]


def test_a_config_env_is_set_last(tmp_path: Path) -> None:
    cfg = VllmServerConfig(model_dir=tmp_path, stats_file=tmp_path / "s.json", env={"ACCELGEN_STATS_FILE": "/x"})
    assert vllm_server_env(cfg, {})["ACCELGEN_STATS_FILE"] == "/x"


def test_a_server_is_healthy_inside_with_and_gone_after(tmp_path: Path) -> None:
    fake = _script(tmp_path / "python", FAKE_SERVER)
    cfg = VllmServerConfig(model_dir=tmp_path, log_file=tmp_path / "logs" / "server.log")
    with VllmServer(cfg, start_timeout_s=60, python=fake) as server:
        assert server.start_s is not None and http_ok(server.base_url + "/health")
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        child = server.child
        assert child is not None
    assert child.poll() is not None and not http_ok(server.base_url + "/health")
    assert f"--scheduler-cls {SCHEDULER_CLS}" in server.log_tail()


def test_a_server_that_exits_while_starting_raises_with_its_log(tmp_path: Path) -> None:
    fake = _script(tmp_path / "python", "import sys\nprint('no vLLM here', flush=True)\nsys.exit(3)\n")
    server = VllmServer(VllmServerConfig(model_dir=tmp_path, log_file=tmp_path / "server.log"), python=fake)
    with pytest.raises(StartError, match=r"vLLM server exited with 3 while starting:\nno vLLM here"):
        server.start()
    assert server.child is not None and server.child.poll() == 3


def test_serve_command_is_what_the_cli_parses(tmp_path: Path) -> None:
    tiers = tmp_path / "tiers.yaml"
    cmd = serve_command("--pool", "demo", port=9, tiers_file=tiers, python="py")
    assert cmd[:4] == ["py", "-m", "accelgen.cli", "serve"]
    args = build_parser().parse_args(cmd[3:])
    assert (args.engine, args.host, args.port, args.tiers, args.log_level, args.pool) == (
        "sim",
        "127.0.0.1",
        9,
        str(tiers),
        "WARNING",
        "demo",
    )
    url = build_parser().parse_args(serve_command(port=9, engine=("--engine-url", "http://e"), log_level=None)[3:])
    assert (url.engine, url.engine_url, url.log_level) == (None, "http://e", "INFO")
