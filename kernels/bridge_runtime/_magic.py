"""``%bridge``: a look at the backend from a console attached to its kernel (JupyterLab's).

    %bridge              which backend runs here, whether a host is connected, the calls
    %bridge events       a display of the backend's events, updated live as they are sent
    %bridge events stop  stop updating the displays of this kernel

``%bridge events`` shows one display in its cell and updates it in place while the console goes
on evaluating: a thread of its own sends ``update_display_data`` with the cell's parent header.
JupyterLab keeps a console cell's output listening to its request after the cell finished (an
output area's request is disposed only when that cell runs again, which a console cell never
does), so the update reaches that cell. The host still gets every event: a watch reads each one
as it passes through the backend (``_backend.add_tap``), it takes nothing.
"""

from __future__ import annotations

import collections
import html
import json
import sys
import threading
import time
import uuid
from typing import Any

from . import _backend

ROWS = 20  # events a display shows: the latest
TEXT_LIMIT = 200  # characters of an event's data shown
UPDATE_INTERVAL = 0.1  # seconds between two updates of a display: a burst is shown at once
MAX_WATCHES = 4  # live displays per kernel; a new one past that stops the oldest

USAGE = """\
%bridge              the backend in this kernel, its host, its calls
%bridge events       its events, live, in this cell's output (the host still gets them all)
%bridge events stop  stop the live displays of this kernel"""


def _short(data: Any) -> str:
    try:
        text = json.dumps(data, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(data)
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


class _Watch:
    """One live display: the latest events, re-rendered by a thread of its own."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.parent = dict(getattr(shell, "parent_header", None) or {})  # the magic's cell
        self.display_id = uuid.uuid4().hex
        self.rows: collections.deque[tuple[int, str, str, str]] = collections.deque(maxlen=ROWS)
        self.count = 0
        self.stopped = False
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.remove_tap = _backend.add_tap(self.tap)
        self.thread = threading.Thread(target=self._loop, name="bridge-events-display", daemon=True)

    def tap(self, type_: str, data: Any) -> None:
        """On the sending thread: rendered now, since the backend may change *data* later."""
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        text = _short(data)
        with self.lock:
            self.count += 1
            self.rows.append((self.count, stamp, type_, text))
        self.wake.set()

    def start(self) -> None:
        from IPython.display import display

        display(self.bundle(), raw=True, display_id=self.display_id)
        self.thread.start()

    def stop(self) -> None:
        self.remove_tap()
        self.stopped = True
        self.wake.set()

    def _loop(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            try:
                self.update()
            except Exception as exc:  # never print from here: it would become an event
                sys.__stderr__.write(f"%bridge events: the display stopped: {exc!r}\n")
                self.stop()
                return
            if self.stopped:
                return
            time.sleep(UPDATE_INTERVAL)

    def update(self) -> None:
        content = {
            "data": self.bundle(),
            "metadata": {},
            "transient": {"display_id": self.display_id},
        }
        publisher = self.shell.display_pub
        publisher.session.send(
            publisher.pub_socket, "update_display_data", content, parent=self.parent
        )

    def bundle(self) -> dict[str, str]:
        with self.lock:
            rows, count = list(self.rows), self.count
        backend = _backend.current_backend()
        who = type(backend).__name__ if backend is not None else "no backend yet"
        state = "stopped" if self.stopped else "live"
        title = f"events of {who}: {count} so far ({state}"
        title += f"; the last {len(rows)})" if count > len(rows) else ")"
        plain = [title, *(f"#{n}  {stamp}  {kind}  {text}" for n, stamp, kind, text in rows)]
        cells = "".join(
            f"<tr><td>#{n}</td><td>{stamp}</td><td><b>{html.escape(kind)}</b></td>"
            f"<td><code>{html.escape(text)}</code></td></tr>"
            for n, stamp, kind, text in rows
        )
        markup = (
            f'<div class="kernel-bridge-events"><div>{html.escape(title)}</div>'
            f'<table style="font-size: 90%">{cells}</table></div>'
        )
        return {"text/plain": "\n".join(plain), "text/html": markup}


_WATCHES: list[_Watch] = []


def _status() -> str:
    backend = _backend.current_backend()
    if backend is None:
        return "no backend here: a script calls run() on a PythonBridge to start one\n\n" + USAGE
    core = backend._bridge_core()
    name = _backend._name_in_main(backend)
    with core.calls_lock:
        running = sorted(call.name for call in core.calls.values())
    lines = [
        f"backend: {type(backend).__name__}" + (f" (the variable {name!r})" if name else ""),
        f"host connected: {'yes' if _backend.host_connected() else 'no'}",
        f"calls in progress: {', '.join(running) if running else 'none'}",
        f"live event displays: {len(_WATCHES)}",
        "",
        USAGE,
    ]
    return "\n".join(lines)


def bridge(line: str) -> None:
    """``%bridge [events [stop]]``: the backend of this kernel, and its events live."""
    from IPython import get_ipython

    words = line.split()
    if not words:
        print(_status())
        return
    if words == ["events"]:
        # A display nobody sees any more (its console closed, its cell run again) would be
        # updated for ever: the oldest goes once there are too many.
        while len(_WATCHES) >= MAX_WATCHES:
            _WATCHES.pop(0).stop()
        watch = _Watch(get_ipython())
        _WATCHES.append(watch)
        watch.start()
        return
    if words == ["events", "stop"]:
        watches = list(_WATCHES)
        _WATCHES.clear()
        for watch in watches:
            watch.stop()
        print(f"stopped {len(watches)} live event display(s)")
        return
    print(f"%bridge: unknown arguments {line!r}\n\n{USAGE}")


def install(shell: Any) -> None:
    """Register ``%bridge`` (the extension calls it at start-up)."""
    shell.register_magic_function(bridge, "line", "bridge")
