"""Decide: pure policy, functions of (state, event, now) with no clock, process or file of their
own: the plan (desired against observed), the replica life cycle state machine, dependency
order (graphlib), restart pacing and the one table of errors. ARCHITECTURE.md has the whole
pipeline."""
