"""The blocking API is the async API: every public method and property of AsyncBridge,
AsyncSession and AsyncBackend has a blocking twin on Bridge, Session and Backend, with the same
parameters (names, kinds, defaults). ``async with`` maps to ``with``, ``aclose()`` to
``close()``, a coroutine to a plain method. Read from the classes, so drift fails here."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import bridge

# Async members that hand out loop-bound internals (the pool, the factory, a Kernel) or are
# the blocking layer's own plumbing: reached through ``Bridge.async_bridge`` and
# ``Backend.async_backend``, run with ``Bridge.call``. A backend is started by spawn().
LOOP_BOUND = {
    bridge.AsyncBridge: {"factory", "pool", "run_on"},
    bridge.AsyncSession: {"kernel"},
    bridge.AsyncBackend: {"kernel", "on_terminate", "start"},
}
RENAMED = {"__aenter__": "__enter__", "__aexit__": "__exit__", "aclose": "close"}
TWINS = [
    (bridge.AsyncBridge, bridge.Bridge),
    (bridge.AsyncSession, bridge.Session),
    (bridge.AsyncBackend, bridge.Backend),
]


def public(cls: type) -> dict[str, Any]:
    """Name -> the class attribute, for every public member (and the context protocol)."""
    found = {}
    for klass in reversed(cls.__mro__[:-1]):
        for name, value in vars(klass).items():
            if not name.startswith("_") or name in RENAMED or name in RENAMED.values():
                found[name] = value
    return found


def parameters(member: Any) -> list[tuple[str, Any, Any]]:
    """(name, kind, default) of each parameter after self (annotations are allowed to differ:
    a blocking method returns the blocking twin)."""
    function = member.fget if isinstance(member, property) else member
    if isinstance(function, staticmethod):
        function = function.__func__
    signature = inspect.signature(function)
    params = list(signature.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


@pytest.mark.parametrize(("async_cls", "sync_cls"), TWINS, ids=lambda c: c.__name__)
def test_every_async_member_has_a_blocking_twin_with_the_same_parameters(
    async_cls: type, sync_cls: type
) -> None:
    async_members = public(async_cls)
    sync_members = public(sync_cls)
    missing, differ = [], []
    for name, member in async_members.items():
        if name in LOOP_BOUND[async_cls]:
            continue
        twin_name = RENAMED.get(name, name)
        twin = sync_members.get(twin_name)
        if twin is None:
            missing.append(twin_name)
            continue
        if isinstance(member, property) != isinstance(twin, property):
            differ.append(f"{twin_name}: property on one side only")
            continue
        if name == "__aexit__":
            continue  # (*exc_info) vs (exc_type, exc, tb): both take the exception triple
        if inspect.iscoroutinefunction(twin):
            differ.append(f"{twin_name}: a coroutine in the blocking API")
        if parameters(member) != parameters(twin):
            differ.append(f"{twin_name}: {parameters(member)} != {parameters(twin)}")
    assert not missing, f"{sync_cls.__name__} lacks {missing}"
    assert not differ, "\n".join(differ)


def test_the_blocking_classes_add_only_their_portal() -> None:
    extra = {
        bridge.Bridge: {"async_bridge", "loop", "call", "submit"},
        bridge.Session: {"async_session"},
        bridge.Backend: {"async_backend", "name"},  # an attribute of AsyncBackend
    }
    for async_cls, sync_cls in TWINS:
        mapped = {RENAMED.get(n, n) for n in public(async_cls)} - LOOP_BOUND[async_cls]
        assert set(public(sync_cls)) - mapped == extra[sync_cls], sync_cls.__name__
