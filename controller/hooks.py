"""Deploy hooks: commands a deploy runs at fixed points (`[services.X.hooks]`, config/model.py `Hook`).

    pre_deploy   first, before anything changed
    migrate      before the new containers start (the old version still serves: expand, don't break it)
    pre_traffic  the new set is healthy and reachable only through the preview route
    post_switch  the new set took all traffic (before the post-switch verification)
    contract     the old release stopped, any keep_old window over: a finished contract sets the schema floor
    post_deploy  last
    on_failure   after a failed deploy put the old release back (its own failure is only reported)

Kinds: `oneoff` (a container of the NEW image with the service's env and volumes, removed after; its exit
code and last log lines reported), `exec` (inside one new container), `http` (a GET through the preview
route, 2xx passes), `run` (a host command; refused unless `allow_host_hooks = true` in [proxy]). Each gets
TURNOUT_SERVICE, TURNOUT_VERSION, TURNOUT_PREVIOUS_VERSION, TURNOUT_PHASE and its `timeout`.

Operations.hook journals each as `hook_started` / `hook_finished` steps, so a daemon killed while a hook
runs is seen by recovery, which never runs it again: it freezes the deploy (controller/recovery.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp

from .config.model import Hook
from .engine.base import ContainerSpec
from .errors import TurnoutError

if TYPE_CHECKING:
    from .operations import Operations

OUTPUT_LINES = 10  # last lines of a hook's output kept in the journal and shown
OUTPUT_CHARS = 2000
ONEOFF_POLL = 0.1  # seconds between looks at a one-off container
HOOK_POOL_PREFIX = "hook-"  # the pool label of a one-off container: hook-<point>


class HookFailed(TurnoutError):
    """A hook with `on_failure = "abort"` failed: the deploy fails (or freezes past a schema floor)."""

    def __init__(self, result: HookResult) -> None:
        self.result = result
        super().__init__(result.summary())


@dataclass(frozen=True)
class HookResult:
    point: str
    kind: str
    ok: bool
    seconds: float
    detail: str  # "exit 0", "HTTP 200", "timed out after 30s", ...
    output: str = ""  # the last lines of its output (or of the answer's body)
    container: str | None = None  # a one-off's container (short id)

    def summary(self) -> str:
        text = (f"{self.point} hook ({self.kind}) {'passed' if self.ok else 'failed'}: {self.detail}, "
                f"{self.seconds:.1f}s")
        if self.output and not self.ok:
            text += "; last output:\n" + "\n".join(f"  | {line}" for line in self.output.splitlines())
        return text

    def describe(self) -> dict[str, Any]:
        return {"point": self.point, "kind": self.kind, "ok": self.ok, "seconds": round(self.seconds, 3),
                "result": self.detail, "output": self.output,
                **({"container": self.container} if self.container else {})}


def hook_env(ops: Operations, point: str) -> dict[str, str]:
    return {"TURNOUT_SERVICE": ops.config.name, "TURNOUT_VERSION": ops.new.version,
            "TURNOUT_PREVIOUS_VERSION": ops.old.version if ops.old else "", "TURNOUT_PHASE": point,
            "TURNOUT_DEPLOYMENT": ops.deployment_id}


async def run_hook(ops: Operations, point: str, hook: Hook) -> HookResult:
    """Run one hook to its end (or its timeout); never raises for the hook's own failure."""
    started = time.monotonic()
    runner = {"oneoff": _oneoff, "exec": _exec, "http": _http, "run": _run}[hook.kind]
    state: dict[str, Any] = {}
    try:
        ok, detail, output = await asyncio.wait_for(runner(ops, point, hook, state), hook.timeout)
    except TimeoutError:
        ok, detail, output = False, f"timed out after {hook.timeout:g}s", state.get("output", "")
    except TurnoutError as exc:
        ok, detail, output = False, str(exc), ""
    # (Cancelled, the daemon is stopping: a one-off is left to recovery, which freezes the deploy.)
    container = state.get("container")
    if container is not None:  # removed once it ended or timed out (killed if still running)
        await ops.remove([container])
    return HookResult(point, hook.kind, ok, time.monotonic() - started, detail, _tail(output),
                      state["container"].short_id if state.get("container") else None)


async def _oneoff(ops: Operations, point: str, hook: Hook, state: dict[str, Any]) -> tuple[bool, str, str]:
    config, release = ops.config, ops.new
    assert config.port is not None and hook.oneoff is not None
    container = await ops.backend.start(ContainerSpec(
        service=config.name, version=release.version, image=release.image, port=config.port,
        deployment_id=ops.deployment_id, pool=HOOK_POOL_PREFIX + point,
        env={**config.env, **hook_env(ops, point)}, command=hook.oneoff,
        volumes=tuple(str(v) for v in config.volumes), extra_labels={**config.labels, **ops.extra_labels},
        mem_limit=config.mem_limit, cpus=config.cpus, pids_limit=config.pids_limit or None,
        cap_drop=config.cap_drop, cap_add=config.cap_add, security_opt=config.security_opt,
        init=config.init, stop_timeout=config.stop_timeout))
    state["container"] = container
    # Recorded (only recorded containers are ever removed) and journalled: a daemon killed from here on
    # leaves the container to recovery, which keeps it for the operator and never starts another.
    ops.journal.record_container(container.id, config.name, container.pool, ops.deployment_id)
    ops.step("hook_container", point=point, container=container.short_id)
    while True:
        seen = await ops.backend.inspect(container.id)
        if not seen.running:
            break
        await asyncio.sleep(ONEOFF_POLL)
    output = await ops.backend.logs_tail(container.id, OUTPUT_LINES)
    code = seen.exit_code
    return code == 0, f"exit {code}", output


async def _exec(ops: Operations, point: str, hook: Hook, state: dict[str, Any]) -> tuple[bool, str, str]:
    assert hook.exec is not None
    if not ops.new.containers:
        return False, "no new container to run it in", ""
    target = ops.new.containers[0]
    code, output = await ops.backend.exec(target.id, hook.exec, hook_env(ops, point))
    return code == 0, f"exit {code} in {target.short_id}", output


async def _http(ops: Operations, point: str, hook: Hook, state: dict[str, Any]) -> tuple[bool, str, str]:
    assert hook.http is not None
    headers = {"X-Turnout-Phase": point}
    listen = ops.proxy.listen
    if listen:
        url = f"http://{listen}{hook.http}"
        host = next(iter(ops.config.hosts), None)
        if host:
            headers["Host"] = host.replace("*", "hook")
        if ops.preview_value:
            headers["X-Turnout-Pool"] = ops.preview_value
    elif ops.new.addresses:  # no proxy listener known (tests): the first new container directly
        url = f"http://{ops.new.addresses[0]}{hook.http}"
    else:
        return False, "nothing to send the request to", ""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers,
                                                                   allow_redirects=False) as response:
            body = (await response.content.read(OUTPUT_CHARS)).decode("utf-8", errors="replace")
            return 200 <= response.status < 300, f"HTTP {response.status} for GET {hook.http}", body
    except aiohttp.ClientError as exc:
        return False, f"GET {hook.http} failed: {exc or type(exc).__name__}", ""


async def _run(ops: Operations, point: str, hook: Hook, state: dict[str, Any]) -> tuple[bool, str, str]:
    assert hook.run is not None
    if not ops.allow_host_hooks:
        return False, "host command hooks are refused unless `allow_host_hooks = true` in [proxy]", ""
    try:
        process = await asyncio.create_subprocess_exec(
            *hook.run, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **hook_env(ops, point)})
    except OSError as exc:
        return False, f"cannot start {hook.run[0]!r}: {exc.strerror or exc}", ""
    try:
        out, _ = await process.communicate()
    except BaseException:  # the timeout (or a cancel): the command does not outlive its hook
        process.kill()
        await process.wait()
        raise
    return process.returncode == 0, f"exit {process.returncode}", out.decode("utf-8", errors="replace")


def _tail(text: str) -> str:
    lines = text.rstrip("\n").splitlines()[-OUTPUT_LINES:]
    return "\n".join(lines)[-OUTPUT_CHARS:]


def preview_secret() -> str:
    return secrets.token_urlsafe(24)


def preview_config(ops: Operations, secret: str) -> Any:
    """The service's routing with an override secret of the hook's own (header-secret)."""
    return replace(ops.config, override="header-secret", override_secret=secret)
