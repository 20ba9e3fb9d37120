"""The state each child of `qchan worker` reports in a file of the parent's folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["read_state", "write_state"]


def read_state(state: Path, index: int) -> str:
    """Child `index`'s last reported state ('' before its first report)."""
    try:
        return (state / f"child-{index}.state").read_text().strip()
    except OSError:
        return ""


def write_state(state: Path, index: int, value: str) -> None:
    path = state / f"child-{index}.state"
    temp = path.with_suffix(f".{os.getpid()}")
    temp.write_text(value + "\n")
    os.replace(temp, path)  # the parent never reads half a word
