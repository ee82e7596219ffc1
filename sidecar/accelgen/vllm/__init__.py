"""AccelGen inside vLLM: the scheduler class that runs in vLLM's engine loop.

Use it as ``--scheduler-cls accelgen.vllm.AccelGenScheduler`` (OpenAI server) or
``LLM(..., scheduler_cls="accelgen.vllm.AccelGenScheduler")``. Importing this package
does not import vLLM: the scheduler is loaded on first attribute access, so
``accelgen model tiny`` and the rest of the CLI work without vLLM installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelgen.vllm.scheduler import AccelGenAsyncScheduler, AccelGenScheduler

__all__ = ["AccelGenAsyncScheduler", "AccelGenScheduler"]


def __getattr__(name: str) -> Any:
    # NOTE: vLLM resolves "accelgen.vllm.AccelGenScheduler" with import_module + getattr,
    # which lands here.
    if name in __all__:
        from accelgen.vllm import scheduler

        return getattr(scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
