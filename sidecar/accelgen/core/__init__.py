"""Pure scheduling logic: SLO tiers, requests, latency models, the planner and baselines.

Nothing here performs I/O or reads a clock: the caller passes ``now`` and the latency
model, so the simulator, the vLLM scheduler and the tests run the very same code.
"""
