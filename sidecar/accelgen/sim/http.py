"""The simulated engine's HTTP face: the slice of vLLM's OpenAI server the sidecar uses.

``POST /v1/completions`` and ``/v1/chat/completions`` (streaming or not), ``GET
/v1/models``, ``/health`` and ``/metrics`` with vLLM's metric names, in front of a
:class:`~accelgen.sim.realtime.RealtimeEngine`. Outputs are ``max_tokens`` tokens
(default 16) of placeholder text per choice, finish reason ``length``. Prompt token ids
count as given, text as UTF-8 bytes / 4 (no tokenizer). A request's tier comes from its
``vllm_xargs`` (:func:`accelgen.wire.resolve_tier`); a tier name the engine was not
configured with is planned with the targets sent beside it.

With ``stats_path`` it writes the in-engine stats file as AccelGen's vLLM scheduler does.

Standalone: ``python -m accelgen.sim.http --port 8100 [--policy NAME] [--stats-file FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from accelgen.argtypes import non_negative_float, port, positive_int
from accelgen.core.latency import LatencyModel
from accelgen.core.policies import policy_names
from accelgen.core.request import blocks_for
from accelgen.core.tiers import ENGINE_DEFAULT_TIERS, SLOTier, TierSet
from accelgen.sim.realtime import Generation, RealtimeEngine, SimEngineConfig
from accelgen.wire import resolve_tier

MODEL_NAME = "accelgen-sim"
SIM_ENGINE = web.AppKey("sim_engine", RealtimeEngine)
_WORDS = ("the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")


class _BadRequest(web.HTTPBadRequest):
    """A 400 in vLLM's error shape (the sidecar normalizes it as it does vLLM's)."""

    def __init__(self, message: str) -> None:
        error = {"message": message, "type": "BadRequestError", "param": None, "code": 400}
        super().__init__(text=json.dumps({"error": error}), content_type="application/json")


def _text_tokens(text: str) -> int:
    return max(1, len(text.encode("utf-8", "replace")) // 4)


def _prompt_tokens(value: object) -> int:
    """A prompt's tokens: a string, a token id, or a non-empty list of either (nested)."""
    if isinstance(value, str):
        return _text_tokens(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return 1
    if isinstance(value, list) and value:
        return sum(_prompt_tokens(v) for v in value)
    raise _BadRequest("prompt must be a non-empty string, list of strings, or list(s) of token ids")


def _chat_tokens(messages: object) -> int:
    """Each message's text plus 4 tokens of role and template."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("messages must be a non-empty list of message objects")
    total = 0
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content}] if isinstance(content, str) else []
        total += 4 + sum(_text_tokens(str(p.get("text", ""))) for p in parts if isinstance(p, dict))
    return total


def request_tier(body: dict[str, Any], engine: RealtimeEngine) -> SLOTier:
    """The request's tier from its ``vllm_xargs``, with the body's ``priority`` as vLLM takes it.

    A tier name the engine was not configured with is kept (the sidecar's tiers reach a
    standalone engine this way); unusable SLO fields plan under the default tier and are
    counted in the stats file, as the vLLM scheduler counts them.
    """
    resolved = resolve_tier(body.get("vllm_xargs"), engine.tiers, adopt_unknown=True)
    if resolved.problem is not None:
        engine.stats.slo_problems[resolved.problem] += 1
    priority = body.get("priority")
    if isinstance(priority, int):
        return replace(resolved.tier, priority=priority)
    return resolved.tier


def _int_or(body: dict[str, Any], *keys: str, default: int) -> int:
    for key in keys:
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _BadRequest(f"{key} must be a positive integer, got {value!r}")
            return value
    return default


def _generation(engine: RealtimeEngine, body: object, *, chat: bool) -> Generation:
    """The request as the engine runs it; 400 for a body it cannot, or a size it never could."""
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    prompt_tokens = _chat_tokens(body.get("messages")) if chat else _prompt_tokens(body.get("prompt"))
    max_tokens = _int_or(body, "max_completion_tokens", "max_tokens", default=16)
    n = _int_or(body, "n", default=1)
    cfg = engine.config
    if prompt_tokens + max_tokens > cfg.max_model_len:
        raise _BadRequest(
            f"This model's maximum context length is {cfg.max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens "
            f"({prompt_tokens} in the messages, {max_tokens} in the completion)."
        )
    blocks = blocks_for(prompt_tokens + max_tokens, cfg.block_size_tokens) * n
    if blocks > cfg.num_kv_blocks:  # it could never be admitted: refuse rather than hang
        raise _BadRequest(
            f"n={n} sequences of {prompt_tokens + max_tokens} tokens need "
            f"{blocks} KV blocks; the engine has {cfg.num_kv_blocks}"
        )
    return Generation(prompt_tokens, max_tokens, request_tier(body, engine), n=n)


@dataclass(frozen=True, slots=True)
class _Reply:
    """How one generation's answer is spelled: its id, kind and the tokens' words."""

    generation: Generation
    chat: bool
    rid: str
    created: int

    @classmethod
    def of(cls, generation: Generation, *, chat: bool) -> _Reply:
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        return cls(generation, chat, rid, int(time.time()))

    def _obj(self, kind: str, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": kind,
            "created": self.created,
            "model": MODEL_NAME,
            "choices": choices,
            "usage": usage,
        }

    def usage(self) -> dict[str, int]:
        g = self.generation
        return {
            "prompt_tokens": g.num_prompt_tokens,
            "completion_tokens": g.num_output_tokens,
            "total_tokens": g.num_prompt_tokens + g.num_output_tokens,
        }

    def finish(self, num_tokens: int) -> str | None:
        return "length" if num_tokens >= self.generation.max_tokens else None

    def chunk(self, index: int, num_tokens: int) -> bytes:
        """The SSE event of choice ``index``'s ``num_tokens``-th token."""
        word, finish = _WORDS[(num_tokens - 1) % len(_WORDS)], self.finish(num_tokens)
        choice: dict[str, Any] = {"index": index, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["delta"] = {"content": word} if num_tokens > 1 else {"role": "assistant", "content": word}
            kind = "chat.completion.chunk"
        else:
            choice.update(text=word, stop_reason=None)
            kind = "text_completion"
        return _event(self._obj(kind, [choice], None))

    def usage_chunk(self) -> bytes:
        return _event(self._obj("chat.completion.chunk" if self.chat else "text_completion", [], self.usage()))

    def whole(self, counts: dict[int, int]) -> dict[str, Any]:
        """The non-streaming answer, once every choice is done."""
        choices = []
        for index in range(self.generation.n):
            k = counts.get(index, 0)
            text = "".join(_WORDS[i % len(_WORDS)] for i in range(k))
            out: dict[str, Any] = {"index": index}
            if self.chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["text"] = text
            out.update(logprobs=None, finish_reason=self.finish(k), stop_reason=None)
            choices.append(out)
        return self._obj("chat.completion" if self.chat else "text_completion", choices, self.usage())


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _stream(request: web.Request, reply: _Reply, *, include_usage: bool) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    try:
        await response.prepare(request)
        while (event := await reply.generation.events.get()) is not None:
            await response.write(reply.chunk(*event))
        if include_usage:
            await response.write(reply.usage_chunk())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client (the sidecar) hung up: aiohttp ends this quietly
    return response


async def _whole(reply: _Reply) -> web.Response:
    counts: dict[int, int] = {}
    while (event := await reply.generation.events.get()) is not None:
        counts[event[0]] = event[1]
    return web.json_response(reply.whole(counts))


async def _serve(engine: RealtimeEngine, request: web.Request, *, chat: bool) -> web.StreamResponse:
    try:
        body = await request.json()
    except ValueError:
        raise _BadRequest("invalid JSON") from None
    generation = _generation(engine, body, chat=chat)
    reply = _Reply.of(generation, chat=chat)
    engine.submit(generation)
    try:
        if not body.get("stream"):
            return await _whole(reply)
        options = body.get("stream_options")
        return await _stream(
            request, reply, include_usage=isinstance(options, dict) and bool(options.get("include_usage"))
        )
    finally:
        if not generation.done:
            engine.abort(generation)  # the client left before the end


def _metrics_text(engine: RealtimeEngine) -> str:
    """vLLM's own names for the gauges and counters the sidecar reads."""
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
    # vLLM's info gauge of the KV cache's size (a pod's free KV in tokens comes from it).
    config = engine.config
    info = f'block_size="{config.block_size_tokens}",num_gpu_blocks="{config.num_kv_blocks}"'
    return text + f"# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{{{info}}} 1.0\n"


def _models(config: SimEngineConfig) -> dict[str, Any]:
    model = {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "accelgen"}
    return {"object": "list", "data": [{**model, "max_model_len": config.max_model_len}]}


def build_sim_app(
    model: LatencyModel,
    config: SimEngineConfig,
    *,
    tiers: TierSet = ENGINE_DEFAULT_TIERS,
    stats_path: Path | None = None,
) -> web.Application:
    """An aiohttp app serving a :class:`RealtimeEngine` like a vLLM OpenAI server.

    Args:
        model: The engine's latency model.
        config: Its capacity, speed and policy.
        tiers: The tiers its policy plans for (the sidecar's).
        stats_path: Where to write the in-engine stats file (none without it).
    """
    # Above the sidecar's 4 MiB limit plus what it adds to a body: the sidecar enforces it.
    app = web.Application(client_max_size=8 * 1024 * 1024)
    engine = RealtimeEngine(model, config, tiers=tiers, stats_path=stats_path)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _serve(engine, request, chat=False)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await _serve(engine, request, chat=True)

    async def loop(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def models(_: web.Request) -> web.Response:
        return web.json_response(_models(config))

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=_metrics_text(engine), content_type="text/plain")

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
    from accelgen.config import load_tiers
    from accelgen.sim.profiles import DEFAULT_SIM_MODEL, load_latency_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=8100)
    parser.add_argument("--latency-model", default=None, help="a named profile or fitted JSON; default: the sidecar's")
    parser.add_argument("--max-num-seqs", type=positive_int, default=32)
    parser.add_argument("--time-scale", type=non_negative_float, default=1.0)
    parser.add_argument("--policy", choices=policy_names(), default="accelgen", help="the core policy that plans")
    parser.add_argument("--tiers", help="tier file (YAML) the policy plans for")
    parser.add_argument(
        "--stats-file", type=Path, help="write the in-engine stats file here (the sidecar's --engine-stats)"
    )
    args = parser.parse_args()
    config = SimEngineConfig(max_num_seqs=args.max_num_seqs, time_scale=args.time_scale, policy=args.policy)
    tiers = load_tiers(args.tiers) if args.tiers else ENGINE_DEFAULT_TIERS
    model = load_latency_model(args.latency_model) if args.latency_model else DEFAULT_SIM_MODEL
    app = build_sim_app(model, config, tiers=tiers, stats_path=args.stats_file)
    web.run_app(app, host=args.host, port=args.port, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
