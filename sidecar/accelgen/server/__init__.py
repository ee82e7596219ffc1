"""The AccelGen sidecar: an OpenAI-compatible aiohttp front for one engine.

It resolves each request's SLO tier, admits or rejects it, releases it to the engine
in slack order, watches every token go by and exports per-tier goodput metrics.
Start it with ``accelgen serve`` (see :mod:`accelgen.server.cli`).
"""
