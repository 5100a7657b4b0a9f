"""The deployment strategies, each one module over one interface, chosen by name."""

from __future__ import annotations

from ..config.model import STRATEGIES as NAMES
from .ab import AB
from .base import Strategy
from .bigbang import BigBang
from .bluegreen import BlueGreen
from .canary import Canary
from .rolling import Rolling

_BY_NAME: dict[str, type[Strategy]] = {cls.name: cls for cls in (BigBang, BlueGreen, Rolling, Canary, AB)}
# In the order of the config's vocabulary, the one list of names; a name without a class fails here.
STRATEGIES: dict[str, type[Strategy]] = {name: _BY_NAME[name] for name in NAMES}

__all__ = ["STRATEGIES", "Strategy"]
