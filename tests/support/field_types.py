"""Types with the field kinds JSON has no type for, shared by the codec tests."""

from __future__ import annotations

import enum
from typing import NamedTuple


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point(NamedTuple):
    x: int
    label: str = "origin"
