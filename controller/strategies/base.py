"""The interface every strategy implements."""

from __future__ import annotations

from typing import ClassVar, Protocol

from ..operations import Operations


class Strategy(Protocol):
    name: ClassVar[str]
    # Whether a deploy with a previous release watches the new one after the switch
    # (`Operations.verify`): until `verified`, recovery does not take the switch as final.
    verifies: ClassVar[bool]

    async def run(self, ops: Operations) -> None:
        """Move traffic from `ops.old` (may be None: first deploy) to `ops.new`.

        On return the new release serves 100% and the old one is out of routing. Raising anything
        leaves rollback to the deployer, which restores the old release (`Deployer._restore`)."""
        ...
