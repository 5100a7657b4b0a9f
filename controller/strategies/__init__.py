"""The four deployment strategies, each one module over one interface, chosen by name."""

from __future__ import annotations

from .base import Strategy
from .bigbang import BigBang
from .bluegreen import BlueGreen
from .canary import Canary
from .rolling import Rolling

STRATEGIES: dict[str, type[Strategy]] = {
    "bigbang": BigBang,
    "bluegreen": BlueGreen,
    "rolling": Rolling,
    "canary": Canary,
}

__all__ = ["STRATEGIES", "Strategy"]
