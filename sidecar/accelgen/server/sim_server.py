"""The simulated engine's HTTP face: the slice of vLLM's OpenAI server the sidecar uses.

``POST /v1/completions`` and ``/v1/chat/completions`` (streaming or not), ``GET
/v1/models``, ``/health`` and ``/metrics`` with vLLM's metric names. Outputs are
``max_tokens`` tokens (default 16) of placeholder text, finish reason ``length``.
Prompt length is estimated as UTF-8 bytes / 4 (no tokenizer).

With ``stats_path`` it writes AccelGen's in-engine stats file as ``accelgen.vllm`` does
(see :mod:`accelgen.server.sim_engine`).

Standalone: ``python -m accelgen.server.sim_server --port 8100 [--stats-file FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from accelgen.argtypes import non_negative_float, port, positive_int
from accelgen.core.latency import LatencyModel
from accelgen.server.body import parse
from accelgen.server.errors import ApiError, error_body
from accelgen.server.sim_engine import SimEngine, SimEngineConfig, SimRequest
from accelgen.server.stream import Assembler

MODEL_NAME = "accelgen-sim"
SIM_ENGINE = web.AppKey("sim_engine", SimEngine)
_WORDS = ("the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")


def _chunk(
    kind: str,
    rid: str,
    created: int,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None = None,
) -> bytes:
    obj = {
        "id": rid,
        "object": kind,
        "created": created,
        "model": MODEL_NAME,
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _generate(engine: SimEngine, body: dict[str, Any], *, chat: bool) -> tuple[SimRequest, AsyncIterator[bytes]]:
    try:
        parsed = parse(body, chat=chat)
    except ApiError as err:
        raise web.HTTPBadRequest(text=json.dumps(err.body()), content_type="application/json") from None
    n = int(body.get("n") or 1)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    limit = engine.config.max_model_len
    if parsed.num_prompt_tokens + max_tokens > limit:
        message = (
            f"This model's maximum context length is {limit} tokens. However, you "
            f"requested {parsed.num_prompt_tokens + max_tokens} tokens "
            f"({parsed.num_prompt_tokens} in the messages, {max_tokens} in the completion)."
        )
        raise web.HTTPBadRequest(text=json.dumps(error_body(400, message)), content_type="application/json")
    cfg = engine.config
    blocks = -(-(parsed.num_prompt_tokens + max_tokens) // cfg.block_size_tokens) * n
    if blocks > cfg.num_kv_blocks:  # it could never be admitted: refuse rather than hang
        message = (
            f"n={n} sequences of {parsed.num_prompt_tokens + max_tokens} tokens need "
            f"{blocks} KV blocks; the engine has {cfg.num_kv_blocks}"
        )
        raise web.HTTPBadRequest(text=json.dumps(error_body(400, message)), content_type="application/json")
    priority = body["priority"] if isinstance(body.get("priority"), int) else 0
    request = SimRequest(num_prompt_tokens=parsed.num_prompt_tokens, max_tokens=max_tokens, n=n, priority=priority)
    kind = "chat.completion.chunk" if chat else "text_completion"
    rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    include_usage = parsed.include_usage

    async def chunks() -> AsyncIterator[bytes]:
        while (i := await request.tokens.get()) is not None:
            finish = "length" if i >= max_tokens else None
            word = _WORDS[(i - 1) % len(_WORDS)]
            choices = []
            for index in range(n):
                if chat:
                    delta = {"content": word} if i > 1 else {"role": "assistant", "content": word}
                    choices.append({"index": index, "delta": delta, "logprobs": None, "finish_reason": finish})
                else:
                    choices.append(
                        {
                            "index": index,
                            "text": word,
                            "logprobs": None,
                            "finish_reason": finish,
                            "stop_reason": None,
                        }
                    )
            yield _chunk(kind, rid, created, choices)
        if include_usage:
            usage = {
                "prompt_tokens": request.num_prompt_tokens,
                "completion_tokens": request.num_output * n,
                "total_tokens": request.num_prompt_tokens + request.num_output * n,
            }
            yield _chunk(kind, rid, created, [], usage)

    engine.submit(request)
    return request, chunks()


def build_sim_app(model: LatencyModel, config: SimEngineConfig, *, stats_path: Path | None = None) -> web.Application:
    """An aiohttp app serving a :class:`SimEngine` like a vLLM OpenAI server.

    ``stats_path``: where to write the in-engine stats file (none without it).
    """
    app = web.Application(client_max_size=4 * 1024 * 1024)
    engine = SimEngine(model, config, stats_path=stats_path)

    async def serve(request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(
                text=json.dumps(error_body(400, "invalid JSON")), content_type="application/json"
            ) from None
        sim_request, chunks = await _generate(engine, body, chat=chat)
        try:
            if not body.get("stream"):
                assembler = Assembler(chat=chat)
                async for raw in chunks:
                    assembler.feed(json.loads(raw[6:]))
                return web.json_response(assembler.result())
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            try:
                await response.prepare(request)
                async for raw in chunks:
                    await response.write(raw)
                await response.write(b"data: [DONE]\n\n")
                await response.write_eof()
            except ConnectionResetError:
                pass  # the client (the sidecar) hung up: aiohttp ends this quietly
            return response
        finally:
            if sim_request.num_output < sim_request.max_tokens:
                engine.abort(sim_request)  # the client left before the end

    async def completions(request: web.Request) -> web.StreamResponse:
        return await serve(request, False)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await serve(request, True)

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": MODEL_NAME,
                        "object": "model",
                        "created": 0,
                        "owned_by": "accelgen",
                        "max_model_len": config.max_model_len,
                    }
                ],
            }
        )

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def metrics(_: web.Request) -> web.Response:
        label = f'{{model_name="{MODEL_NAME}"}}'
        lines = [
            ("gauge", "vllm:num_requests_running", len(engine.running)),
            ("gauge", "vllm:num_requests_waiting", len(engine.waiting)),
            ("gauge", "vllm:kv_cache_usage_perc", engine.kv_usage),
            ("counter", "vllm:prompt_tokens_total", engine.num_prompt_tokens_total),
            ("counter", "vllm:generation_tokens_total", engine.num_generation_tokens_total),
            ("counter", "vllm:request_success_total", engine.num_finished_total),
        ]
        text = "".join(f"# TYPE {name} {kind}\n{name}{label} {float(value)}\n" for kind, name, value in lines)
        return web.Response(text=text, content_type="text/plain")

    async def loop(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(loop)
    app[SIM_ENGINE] = engine
    return app


def main() -> None:
    """Serve the sim engine alone (for fault tests and ``accelgen bench proxy``)."""
    from accelgen.server.speed import load_latency_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=8100)
    parser.add_argument("--latency-model", default=None)
    parser.add_argument("--max-num-seqs", type=positive_int, default=32)
    parser.add_argument("--time-scale", type=non_negative_float, default=1.0)
    parser.add_argument(
        "--stats-file", type=Path, help="write the in-engine stats file here (the sidecar's --engine-stats)"
    )
    args = parser.parse_args()
    config = SimEngineConfig(max_num_seqs=args.max_num_seqs, time_scale=args.time_scale)
    app = build_sim_app(load_latency_model(args.latency_model), config, stats_path=args.stats_file)
    web.run_app(app, host=args.host, port=args.port, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
