"""Discrete-event simulation of one engine replica, workloads and their metrics.

Uses :mod:`accelgen.core` only: the very policy objects that run inside the engine.
"""
