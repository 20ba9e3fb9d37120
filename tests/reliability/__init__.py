"""Reliability suite: zero-loss accounting under faults, on every transport (issue 8)."""
