"""The log tail a failing container leaves in its error (and so in the journal and `history`) is
capped in lines and bytes, and says so when it was cut."""

from __future__ import annotations

import pytest

from controller.engine.base import Container
from controller.errors import ContainerFailed
from controller.readiness import wait_healthy


class ExitedWithLogs:
    """A container that already exited, with these logs (however long the engine returns them)."""

    def __init__(self, logs: str) -> None:
        self.logs = logs

    async def inspect(self, container_id: str) -> Container:
        return Container(id=container_id, name="x", service="web", version="v2", pool="v2",
                         deployment_id="d-000001", image="app:v2", address=None, state="exited",
                         exit_code=1, labels={})

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        return self.logs


async def failure(logs: str) -> ContainerFailed:
    with pytest.raises(ContainerFailed) as caught:
        await wait_healthy(ExitedWithLogs(logs), "c" * 64, None, timeout=5)
    return caught.value


async def test_a_short_tail_is_kept_whole_and_unmarked():
    error = await failure("starting\nboom: no DATABASE_URL")
    assert error.log_tail == "starting\nboom: no DATABASE_URL"
    assert "[truncated]" not in str(error)


async def test_too_many_lines_keep_the_last_twenty_marked():
    error = await failure("\n".join(f"line {n}" for n in range(1000)))
    lines = error.log_tail.splitlines()
    assert lines[0] == "[truncated]" and lines[1:] == [f"line {n}" for n in range(980, 1000)]


async def test_one_huge_line_keeps_its_last_bytes_marked():
    error = await failure("x" * 5_000_000 + "END")
    assert error.log_tail.startswith("[truncated]\n") and error.log_tail.endswith("END")
    assert len(error.log_tail.encode()) <= 2048 + len("[truncated]\n")
    assert len(str(error).encode()) < 4096  # the message the journal stores stays small


async def test_a_cut_never_splits_a_multibyte_character():
    error = await failure("é" * 3000)
    tail = error.log_tail.removeprefix("[truncated]\n")
    assert tail and set(tail) == {"é"}
