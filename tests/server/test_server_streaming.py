"""Accept: text/event-stream on the routes that run code: outputs as Server-Sent Events."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_process import ServiceProcess

from bridge.service.events import OutputBacklog

EVENTS = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("root")
    (folder / "script.py").write_text("print('from the script', flush=True)\n")
    return folder


@pytest.fixture(scope="module")
def service(root: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess("--root", str(root), pool_size=1) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service: ServiceProcess) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def events(response: httpx.Response) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """(arrival time, event, data) of each event of a streamed answer, as it arrives."""
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield time.monotonic(), name, json.loads(line[6:])
            name = ""


def stream(client: httpx.Client, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    with client.stream("POST", path, json=body, headers=EVENTS) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [(name, data) for _, name, data in events(r)]


def test_the_first_output_arrives_well_before_the_call_ends(client: httpx.Client) -> None:
    code = "import time\nprint('a', flush=True)\ntime.sleep(1)\nprint('b')\nreturn 'done'"
    started = time.monotonic()
    with client.stream("POST", "/execute", json={"content": code}, headers=EVENTS) as r:
        got = list(events(r))
    ended = time.monotonic()
    assert [(name, data.get("text")) for _, name, data in got[:2]] == [
        ("stdout", "a\n"),
        ("stdout", "b\n"),
    ]
    first = got[0][0] - started
    assert first < (ended - started) - 0.7, (first, ended - started)
    assert [name for _, name, _ in got[2:]] == ["result", "end"]
    end = got[-1][2]
    assert end["success"] is True and end["result"] == "done" and end["stdout"] == "a\nb\n"


def test_every_event_and_the_end_is_the_json_answer(client: httpx.Client) -> None:
    code = (
        "import sys\n"
        "from IPython.display import Markdown, display\n"
        "print('out', flush=True)\n"
        "print('err', file=sys.stderr, flush=True)\n"
        "display(Markdown('# hi'))\n"
        "return 7"
    )
    got = stream(client, "/execute", {"content": code})
    assert [name for name, _ in got] == ["stdout", "stderr", "display", "result", "end"]
    assert got[0][1] == {"text": "out\n"} and got[1][1] == {"text": "err\n"}
    display = got[2][1]
    assert display["output_type"] == "display_data"
    assert sorted(display["data"]) == ["text/markdown", "text/plain"]
    assert got[3][1]["data"]["application/json"] == 7
    plain = client.post("/execute", json={"content": code}).json()
    end = got[-1][1]
    assert set(end) == set(plain)
    assert end["outputs"] == plain["outputs"] and end["result"] == plain["result"] == 7

    failed = stream(client, "/execute", {"content": "print('before', flush=True)\n1 / 0"})
    assert [name for name, _ in failed] == ["stdout", "error", "end"]
    error = failed[1][1]
    assert error["ename"] == "ZeroDivisionError" and error["evalue"] == "division by zero"
    assert isinstance(error["traceback"], list)
    assert failed[-1][1]["success"] is False
    assert failed[-1][1]["error_type"] == "python_error"


def test_evaluate_files_and_contexts_stream_too(client: httpx.Client) -> None:
    assert stream(client, "/evaluate", {"expr": "6 * 7"})[-1][1]["result"] == 42
    got = stream(client, "/execute-file", {"path": "script.py"})
    assert got[0] == ("stdout", {"text": "from the script\n"})
    context = client.post("/contexts").json()
    base = f"/contexts/{context['id']}"
    try:
        client.post(f"{base}/execute", json={"content": "x = 20"})
        got = stream(client, f"{base}/execute", {"content": "print(x, flush=True)\nx += 1"})
        assert got[0] == ("stdout", {"text": "20\n"})
        assert stream(client, f"{base}/evaluate", {"expr": "x * 2"})[-1][1]["result"] == 42
        got = stream(client, f"{base}/execute-file", {"path": "script.py"})
        assert got[0] == ("stdout", {"text": "from the script\n"})
    finally:
        client.delete(base)


def test_a_failure_before_any_output_is_the_plain_json_answer(client: httpx.Client) -> None:
    for path, body, status in (
        ("/execute", {"contentx": "1"}, 400),
        ("/execute-file", {"path": "../x.py"}, 403),
        ("/contexts/nope/execute", {"content": "1"}, 404),
    ):
        r = client.post(path, json=body, headers=EVENTS)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["status"] == status


def test_a_timeout_after_output_ends_the_stream_with_the_failure(client: httpx.Client) -> None:
    got = stream(
        client,
        "/execute",
        {
            "content": "print('working', flush=True)\nimport time\ntime.sleep(30)",
            "timeout_secs": 1.5,
        },
    )
    assert got[0] == ("stdout", {"text": "working\n"})
    end = got[-1]
    assert end[0] == "end"
    assert end[1]["error_type"] == "timeout" and end[1]["status"] == 504
    assert end[1]["stdout"] == "working\n"


def test_only_an_accept_that_asks_for_events_gets_them(client: httpx.Client) -> None:
    for accept in ("application/json", "*/*", "text/event-stream;q=0", ""):
        r = client.post("/evaluate", json={"expr": "1"}, headers={"Accept": accept})
        assert r.headers["content-type"].startswith("application/json"), accept
        assert r.json()["result"] == 1
    r = client.post(
        "/evaluate", json={"expr": "1"}, headers={"Accept": "application/json, text/event-stream"}
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    # Routes that run no code answer JSON whatever the Accept says.
    assert client.get("/health", headers=EVENTS).json()["status"] == "ok"


def test_a_client_that_goes_away_interrupts_the_code(
    service: ServiceProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "outcome"
    code = (
        "import time\nprint('started', flush=True)\ntry:\n    time.sleep(4)\n"
        f"except KeyboardInterrupt:\n    open({str(marker)!r}, 'w').write('interrupted')\n"
        "    raise\n"
        f"open({str(marker)!r}, 'w').write('not interrupted')"
    )
    started = time.monotonic()
    with (
        service.client() as c,
        c.stream("POST", "/execute", json={"content": code}, headers=EVENTS) as r,
    ):
        first = next(events(r))
        assert first[1:] == ("stdout", {"text": "started\n"})
    # The only pool kernel is free again long before the code would have ended: it ran the
    # code's KeyboardInterrupt handler first (one call at a time), so the code never finishes.
    with service.client() as c:
        assert c.post("/evaluate", json={"expr": "1 + 1"}).json()["result"] == 2
    assert time.monotonic() - started < 3.5
    assert marker.read_text() == "interrupted"


# -- a reader that reads nothing ---------------------------------------------------------------

FLOOD = 1_600  # prints of 5,000 characters, each its own message (flush=True): 8 MB of text,
# well past what loopback's socket buffers (4 MB at most: net.ipv4.tcp_wmem) and the stream's
# backlog (OutputBacklog.LIMIT, 1 MiB) take together (5 MB was too close: at times all fitted)


def read_chunked(sock: socket.socket) -> str:
    """The body of a chunked HTTP answer (Connection: close) read to its end."""
    raw = b""
    while chunk := sock.recv(1 << 16):
        raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    body = b""
    while (size := int(rest.partition(b"\r\n")[0], 16)) > 0:
        rest = rest.partition(b"\r\n")[2]
        body, rest = body + rest[:size], rest[size + 2 :]
    return body.decode()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def flood_to_a_stalled_reader(service: ServiceProcess, prints: int) -> tuple[float, str]:
    """Stream *prints* lines of 5,000 characters to a reader that reads nothing until the
    code says it is done; (the service's peak RSS meanwhile in MB, the answer's body).

    The code says it has printed everything by connecting to `done`: the flood is a size,
    whatever the machine's speed, and the reader waits on that event. Its receive buffer is
    small: the service's writes stall at once (loopback's would take megabytes first)."""
    peak, stop = [0.0], threading.Event()

    def sample() -> None:  # a measurement at a fixed pace, not a wait for anything
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb(service.pid))
            stop.wait(0.02)

    with socket.create_server(("127.0.0.1", 0)) as done:
        done.settimeout(120)
        code = (
            "import socket\n"
            f"for i in range({prints}):\n    print(f'{{i:04999}}', flush=True)\n"
            f"socket.create_connection(('127.0.0.1', {done.getsockname()[1]})).close()\n"
            "return 'ok'"
        )
        body = json.dumps({"content": code, "timeout_secs": 120}).encode()
        host, port = service.url.removeprefix("http://").rsplit(":", 1)
        request = (
            f"POST /execute HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: token {service.token}\r\nAccept: text/event-stream\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with socket.socket() as reader:
                reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                reader.connect((host, int(port)))
                reader.sendall(request)
                done.accept()[0].close()  # the whole flood has been made
                text = read_chunked(reader)
        finally:
            stop.set()
            sampler.join()
    return peak[0], text


def test_a_reader_that_reads_nothing_is_told_what_was_skipped_and_end_has_it_all(
    service: ServiceProcess,
) -> None:
    _, text = flood_to_a_stalled_reader(service, FLOOD)
    named = [block.split("\n", 2) for block in text.split("\n\n") if block.startswith("event: ")]
    found = {name[7:]: json.loads(data[6:]) for name, data, *_ in named}
    chunks = [json.loads(data[6:])["text"] for name, data, *_ in named if name == "event: stdout"]
    skipped = [json.loads(data[6:]) for name, data, *_ in named if name == "event: skipped"]
    stdout = "".join(f"{i:04999}\n" for i in range(FLOOD))
    # What was streamed came in order; the rest (and the result's output) is said skipped,
    # and `end` has it all.
    at = 0
    for chunk in chunks:
        at = stdout.index(chunk, at) + len(chunk)
    streamed = sum(map(len, chunks))
    assert skipped and streamed < len(stdout)
    assert sum(event["characters"] for event in skipped) >= len(stdout) - streamed
    assert found["end"]["success"] and found["end"]["result"] == "ok"
    assert found["end"]["stdout"] == stdout


def test_the_backlog_keeps_at_most_its_limit_and_counts_the_rest() -> None:
    backlog = OutputBacklog(limit=10_000)
    for i in range(1_000):  # 1,000 outputs of 100 characters: 356 counted each
        backlog.put({"output_type": "stream", "name": "stdout", "text": f"{i:099}\n"})
    events = backlog.drain()
    kept = [data for name, data in events if name == "stdout"]
    assert len(kept) == 10_000 // (100 + OutputBacklog.OVERHEAD)
    assert [d["text"] for d in kept] == [f"{i:099}\n" for i in range(len(kept))]
    name, skipped = events[-1]
    assert name == "skipped" and (skipped.outputs, skipped.characters) == (
        1_000 - len(kept),
        100 * (1_000 - len(kept)),
    )
    assert not backlog.pending and backlog.drain() == []
    big = {"output_type": "stream", "name": "stderr", "text": "x" * 50_000}
    backlog.put(big)  # bigger than the limit, with nothing before it: it still goes
    assert backlog.drain() == [("stderr", {"text": big["text"]})]


# -- what a flood costs the service ------------------------------------------------------------


def test_a_flood_to_a_stalled_reader_costs_max_output_not_the_flood() -> None:
    """40 MB printed to a stalled reader costs the service what the call keeps (max_output,
    1 MB here) and the stream's backlog, not what was printed (issue 19: 93 -> 330 MB)."""
    with ServiceProcess("--BridgeApp.max_output=1000000", pool_size=1) as service:
        flood_to_a_stalled_reader(service, 1000)  # warms the allocators up
        before = _rss_mb(service.pid)
        peak, text = flood_to_a_stalled_reader(service, 8000)
    grown = peak - before
    assert grown < 20, f"40 MB printed to a stalled reader grew the service by {grown:.0f} MB"
    end = json.loads(text.rsplit("event: end\ndata: ", 1)[1].split("\n", 1)[0])
    assert end["success"] and end["result"] == "ok" and end["truncated"]
    kept = "".join(f"{i:04999}\n" for i in range(200))[:1_000_000]
    assert end["stdout"].startswith(kept) and len(end["stdout"]) < 1_000_000 + 200  # + a note
