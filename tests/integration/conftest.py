"""Fixtures the integration tests share."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Iterator

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


@pytest.fixture(autouse=True)
def _garbage_collected_after_each_test() -> Iterator[None]:
    """TURNOUT_GC_EACH_TEST=1: a full garbage collection after every test, so a socket or transport a
    test left open warns (and fails: warnings are errors) in that test's teardown, not in whichever later
    test the collector happens to run. Off by default: a full collection per test costs time."""
    yield
    if os.environ.get("TURNOUT_GC_EACH_TEST") == "1":
        gc.collect()
