"""Benchmark drivers (``accelgen bench ...``), their reports and plots."""
