"""Shared test helpers: factories, the drive loop over vLLM's engine, child processes,
the sidecar stack, deploy and operator fixtures."""
