"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from helpers.upstreams import TestUpstream


@pytest.fixture
def upstream_names() -> tuple[str, ...]:
    """The names of the upstreams `ups` starts; a module wanting more overrides this fixture."""
    return ("a", "b")


@pytest.fixture
def upstream_class() -> type[TestUpstream]:
    """What `ups` starts; a module with its own kind of test upstream overrides this fixture."""
    return TestUpstream


@pytest.fixture
async def ups(upstream_names: tuple[str, ...], upstream_class: type[TestUpstream]
              ) -> AsyncIterator[list[TestUpstream]]:
    """Real test upstreams on loopback (named after `upstream_names`), closed at the end."""
    upstreams = [await upstream_class(name).start() for name in upstream_names]
    yield upstreams
    for upstream in upstreams:
        await upstream.close()
