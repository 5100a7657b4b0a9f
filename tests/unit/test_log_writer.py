"""LogWriter: lines batched off the event loop to a thread that writes them; a reader that stalls costs
lines (counted), never the loop; a file reopened in order; nothing lost at close while someone reads."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from helpers.upstreams import LogCapture, wait_for
from proxy.log_writer import LogWriter


def line(i: int) -> str:
    return f'{{"n": {i}, "pad": "{"x" * 80}"}}\n'


def read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 65536):
        into += chunk


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


async def test_a_reader_that_never_reads_costs_counted_lines_never_the_loop(pipe):
    r, w = pipe
    writer = LogWriter(fd=w, max_backlog=64 * 1024)
    for i in range(20_000):  # ~2 MiB: far more than the pipe (64 KiB) and the backlog hold
        writer.add(line(i))
    writer.flush()
    assert writer.dropped > 0  # the loop went on; what did not fit was counted
    assert writer.waiting <= 64 * 1024
    got = bytearray()
    reader = threading.Thread(target=read_all, args=(r, got))
    reader.start()  # someone reads again: the rest comes out, and close waits for it
    assert writer.close() == writer.dropped
    os.close(w)
    reader.join(10)
    numbers = [int(x.split(b",")[0][6:]) for x in got.splitlines()]
    assert len(numbers) + writer.dropped == 20_000  # every line written whole, or counted as dropped
    assert numbers == sorted(numbers)


async def test_close_gives_up_on_a_stalled_reader_and_counts_what_was_waiting(pipe):
    r, w = pipe
    writer = LogWriter(fd=w)
    for i in range(2_000):  # ~200 KiB: the thread blocks in write, the rest waits in the backlog
        writer.add(line(i))
    assert writer.close(stall=0.2) > 0  # it wrote what the pipe took, then made no progress: given up
    assert 0 < writer.written < 200_000
    assert writer.dropped + writer.written // len(line(0)) <= 2_000
    os.close(r)  # the stuck write fails (EPIPE) and the thread ends
    await wait_for(lambda: not writer.running)


def test_a_failing_destination_is_said_once_and_its_lines_counted(pipe, capfd):
    r, w = pipe
    os.close(r)  # every write fails with EPIPE
    writer = LogWriter(fd=w)
    writer.write_now("one\n")
    writer.write_now("two\n")
    writer.close()
    assert writer.dropped == 2 and "Broken pipe" in writer.failed
    assert capfd.readouterr().err.count("log writes failed") == 1


async def test_lines_wait_at_most_the_interval_and_events_keep_their_order():
    capture = LogCapture(interval=0.05)
    writer = capture.writer
    writer.add("access 1\n")
    writer.add("access 2\n")
    await wait_for(lambda: capture.data)  # the interval's timer handed them over, nothing else did
    writer.add("access 3\n")
    writer.write_now("event 4\n")  # an event goes at once, after what was gathered before it
    other = threading.Thread(target=writer.write_now, args=("from a thread\n",))
    other.start()
    other.join()
    assert capture.lines()[:4] == ["access 1", "access 2", "access 3", "event 4"]
    assert "from a thread" in capture.lines()
    writer.close()


async def test_a_batch_goes_out_when_full_without_waiting_for_the_interval():
    capture = LogCapture(interval=3600, batch_lines=10)
    for i in range(25):
        capture.writer.add(f"{i}\n")
    await wait_for(lambda: capture.data.count(b"\n") == 20)
    assert capture.lines() == [str(i) for i in range(25)]
    capture.writer.close()


async def test_a_file_is_reopened_in_order_after_logrotate_moved_it(tmp_path):
    path = tmp_path / "access.log"
    writer = LogWriter(path=str(path))
    writer.add("before 1\n")
    writer.add("before 2\n")
    path.rename(tmp_path / "access.log.1")  # logrotate
    marker = writer.reopen()
    writer.add("after\n")
    assert marker is not None and await asyncio.to_thread(marker.done.wait, 10) and not marker.error
    writer.close()
    assert (tmp_path / "access.log.1").read_text() == "before 1\nbefore 2\n"
    assert path.read_text() == "after\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)


async def test_a_reopen_that_fails_keeps_the_old_file(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    writer = LogWriter(path=str(logs / "access.log"))
    (logs / "access.log").rename(tmp_path / "moved.log")
    logs.rmdir()  # nowhere to reopen it
    marker = writer.reopen()
    assert marker is not None and await asyncio.to_thread(marker.done.wait, 10)
    assert "cannot open" in marker.error
    writer.write_now("still written\n")
    writer.close()
    assert (tmp_path / "moved.log").read_text() == "still written\n"


def test_stderr_has_nothing_to_reopen():
    assert LogWriter(fd=os.dup(2)).reopen() is None

