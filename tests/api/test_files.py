"""Files in and out of a session's kernel, on local kernels and on each kind of gateway.

The bytes travel through the kernel's channels (``bridge_runtime._files``), so the same checks
hold wherever the kernel runs. A gateway's kernels share the gateway's working folder: each
test works in a folder of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import bridge

KERNEL_SHA256 = "return __import__('hashlib').sha256(open(path, 'rb').read()).hexdigest()"
# A real 8x8 PNG, made in the kernel with the standard library.
WRITE_PNG = """\
import struct, zlib
def chunk(kind, data):
    body = kind + data
    return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))
rows = b''.join(b'\\x00' + bytes(v for x in range(8) for v in (x * 32, y * 32, 128))
               for y in range(8))
png = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 8, 8, 8, 2, 0, 0, 0))
       + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))
with open(path, 'wb') as f:
    f.write(png)
return __import__('hashlib').sha256(png).hexdigest()
"""


@pytest.fixture
def session(shared_bridge: bridge.Bridge) -> Iterator[bridge.Session]:
    with shared_bridge.session() as s:
        yield s


@pytest.fixture
def folder(session: bridge.Session) -> Iterator[str]:
    """A folder of this test's own in the session's working folder, removed afterwards."""
    name = f"files-test-{uuid.uuid4().hex[:12]}"
    yield name
    session.execute("import shutil; shutil.rmtree(name, ignore_errors=True)", inputs={"name": name})


def test_a_10_mb_random_binary_arrives_whole(session: bridge.Session, folder: str) -> None:
    data = os.urandom(10 * 1024 * 1024)
    info = session.upload(data, f"{folder}/random.bin")
    assert (info.name, info.path, info.size, info.kind) == (
        "random.bin",
        f"{folder}/random.bin",
        len(data),
        "file",
    )
    kernel_sha = session.execute(KERNEL_SHA256, inputs={"path": f"{folder}/random.bin"}).value
    assert kernel_sha == hashlib.sha256(data).hexdigest()
    assert session.download(f"{folder}/random.bin") == data


def test_a_png_the_kernel_wrote_downloads_whole(
    session: bridge.Session, folder: str, tmp_path: Path
) -> None:
    session.execute("import os; os.makedirs(folder)", inputs={"folder": folder})
    r = session.execute(WRITE_PNG, inputs={"path": f"{folder}/out.png"})
    assert r.success, r.error
    png = session.download(f"{folder}/out.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert hashlib.sha256(png).hexdigest() == r.value
    info = session.download(f"{folder}/out.png", tmp_path / "out.png")
    assert info.size == len(png)
    assert hashlib.sha256((tmp_path / "out.png").read_bytes()).hexdigest() == r.value
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left


def test_the_blocking_stream_twins_move_chunks_both_ways(
    session: bridge.Session, folder: str
) -> None:
    chunks = [os.urandom(700_000) for _ in range(4)]  # several of the channel's chunks
    info = session.upload(iter(chunks), f"{folder}/parts.bin", size=sum(map(len, chunks)))
    assert info.size == sum(map(len, chunks))
    with session.download_stream(f"{folder}/parts.bin") as d:
        assert d.info is not None and d.info.size == info.size
        received = list(d)
    assert len(received) > 1  # it came chunk by chunk, not whole
    assert b"".join(received) == b"".join(chunks)


def test_list_and_remove(session: bridge.Session, folder: str) -> None:
    session.upload(b"a,b\n1,2\n", f"{folder}/data/in.csv")
    session.upload(b"x", f"{folder}/note.txt")
    listing = session.list_files(folder)
    assert [(f.name, f.kind) for f in listing] == [("data", "directory"), ("note.txt", "file")]
    assert [(f.path, f.size) for f in session.list_files(f"{folder}/data")] == [
        (f"{folder}/data/in.csv", 8)
    ]
    session.remove(f"{folder}/data/in.csv")
    session.remove(f"{folder}/data")  # an empty folder
    assert [f.name for f in session.list_files(folder)] == ["note.txt"]
    with pytest.raises(bridge.FileRefused) as missing:
        session.remove(f"{folder}/data")
    assert missing.value.reason == "not_found"
    with pytest.raises(bridge.FileRefused) as missing:
        session.download(f"{folder}/nothing.bin")
    assert missing.value.reason == "not_found"


OUT_OF_THE_FOLDER = """\
import os, tempfile
outside = tempfile.mkdtemp(prefix='files-outside-')
with open(os.path.join(outside, 'secret'), 'w') as f:
    f.write('secret')
os.makedirs(folder)
os.symlink(outside, os.path.join(folder, 'out'))
os.symlink(os.path.join(outside, 'secret'), os.path.join(folder, 'secret-link'))
return outside
"""

STATE = """\
import os, hashlib
def digest(p):
    try:
        with open(p, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError as exc:
        return type(exc).__name__
return {
    'outside': sorted(os.listdir(outside)),
    'secret': digest(os.path.join(outside, 'secret')),
    'passwd': digest('/etc/passwd'),
    'up': os.path.lexists('../x'),
    'link': os.path.islink(os.path.join(folder, 'secret-link')),
    'inside': sorted(os.listdir(folder)),
}
"""


def test_paths_out_of_the_folder_are_refused_and_nothing_is_read_or_written(
    session: bridge.Session, folder: str
) -> None:
    outside = session.execute(OUT_OF_THE_FOLDER, inputs={"folder": folder}).value
    state = {"folder": folder, "outside": outside}
    before = session.execute(STATE, inputs=state).value
    try:
        for path in (
            "../x",
            "/etc/passwd",
            f"{folder}/out/secret",
            f"{folder}/secret-link",
            f"{folder}/../../x",
            f"{folder}/%2e%2e/%2e%2e/x",
        ):
            for method, args in (
                (session.download, (path,)),
                (session.upload, (b"written", path)),
                (session.remove, (path,)),
            ):
                if method == session.remove and path.endswith("secret-link"):
                    continue  # a symlink itself can be removed: see below
                with pytest.raises(bridge.FileRefused) as refused:
                    method(*args)
                assert refused.value.reason == "forbidden", (path, str(refused.value))
        with pytest.raises(bridge.FileRefused) as refused:
            session.upload(b"written", f"{folder}/out/new")
        assert refused.value.reason == "forbidden"
        for path in ("..", "/etc", f"{folder}/out"):
            with pytest.raises(bridge.FileRefused) as refused:
                session.list_files(path)
            assert refused.value.reason == "forbidden"
        assert session.execute(STATE, inputs=state).value == before
        assert before["outside"] == ["secret"] and before["link"]
        session.remove(f"{folder}/secret-link")  # the link goes, never what it names
        after = session.execute(STATE, inputs=state).value
        assert after == {**before, "link": False, "inside": ["out"]}
    finally:
        session.execute("import shutil; shutil.rmtree(p)", inputs={"p": outside})


async def _chunks(total: int, size: int = 300) -> AsyncIterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def test_past_the_size_limits_refused_and_no_partial_file(shared_bridge: bridge.Bridge) -> None:
    name = f"files-limits-{uuid.uuid4().hex[:12]}"
    with shared_bridge.session(max_file_bytes=1000, max_context_bytes=1500) as s:
        try:
            with pytest.raises(bridge.FileRefused) as refused:  # its size says so at once
                s.upload(b"x" * 1001, f"{name}/known.bin")
            assert refused.value.reason == "too_large"
            # A stream of unknown size: refused once its bytes pass the limit, and the
            # temporary file it was written to is gone.
            stream = s.async_session.upload(_chunks(1001), f"{name}/streamed.bin")
            with pytest.raises(bridge.FileRefused) as refused:
                shared_bridge.call(lambda: stream)
            assert refused.value.reason == "too_large"
            assert s.list_files(name) == []
            # Per context: what was uploaded and is still there counts.
            s.upload(b"a" * 800, f"{name}/a.bin")
            with pytest.raises(bridge.FileRefused) as refused:
                shared_bridge.call(s.async_session.upload, _chunks(800), f"{name}/b.bin")
            assert refused.value.reason == "too_large"
            assert [f.name for f in s.list_files(name)] == ["a.bin"]
            s.upload(b"a" * 900, f"{name}/a.bin")  # replacing a file counts it once
            s.remove(f"{name}/a.bin")
            assert s.upload(b"b" * 1000, f"{name}/b.bin").size == 1000
            s.execute("open(p, 'wb').write(b'k' * 1001)", inputs={"p": f"{name}/kernel.bin"})
            with pytest.raises(bridge.FileRefused) as refused:
                s.download(f"{name}/kernel.bin")
            assert refused.value.reason == "too_large"
        finally:
            s.execute("import shutil; shutil.rmtree(n, ignore_errors=True)", inputs={"n": name})


@pytest.mark.asyncio
async def test_a_stream_in_and_out_with_a_local_file(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    async with abridge.session(cwd=work) as s:
        info = await s.upload(source, "copy.bin")
        assert info.size == source.stat().st_size
        assert (work / "copy.bin").read_bytes() == source.read_bytes()
        seen = []
        async with s.download_stream("copy.bin") as d:
            assert d.size == info.size
            async for chunk in d:
                seen.append(chunk)
        assert len(seen) == 4 and b"".join(seen) == source.read_bytes()
        async with s.download_stream("copy.bin") as d:  # left early: the kernel stops
            async for _ in d:
                break
        assert (await s.evaluate("1 + 1")).value == 2
        assert sorted(p.name for p in work.iterdir()) == ["copy.bin"]


@pytest.mark.asyncio
async def test_a_transfer_waits_for_a_busy_kernel_within_its_timeout(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    async with abridge.session(cwd=tmp_path) as s:
        running = asyncio.Event()
        busy = asyncio.ensure_future(
            s.execute(
                "import time; print('running', flush=True); time.sleep(1.5)",
                on_output=lambda output: running.set(),
            )
        )
        await running.wait()
        with pytest.raises(bridge.CallTimeout):
            await s.upload(b"late", "late.bin", timeout=0.3)
        assert (await busy).success
        assert await s.upload(b"now", "now.bin", timeout=5)
        left = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240
        assert left == ["now.bin"]  # nothing left over


@pytest.mark.asyncio
async def test_without_openat2_the_walk_gives_the_same_answers(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (work / "out").symlink_to(outside)
    (work / "secret-link").symlink_to(outside / "secret")
    (work / "inside").mkdir()
    (work / "inside" / "ok.txt").write_bytes(b"ok")
    async with abridge.session(cwd=work) as s:
        for openat2 in (True, False):
            code = "import bridge_runtime._beneath as b; b._state['openat2'] = on"
            assert (await s.execute(code, inputs={"on": openat2})).success
            answers = []
            for path in ("out/secret", "secret-link", "out/new", "inside/ok.txt"):
                try:
                    answers.append(await s.download(path))
                except bridge.FileRefused as exc:
                    answers.append(exc.reason)
            assert answers == ["forbidden", "forbidden", "forbidden", b"ok"], openat2
            with pytest.raises(bridge.FileRefused) as refused:
                await s.upload(b"x", "out/new")
            assert refused.value.reason == "forbidden"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


@pytest.mark.asyncio
async def test_a_kernel_dying_mid_upload_fails_it_and_the_next_kernel_serves(
    abridge: bridge.AsyncBridge, tmp_path: Path
) -> None:
    async with abridge.session(cwd=tmp_path) as s:
        pid = s.kernel.pid
        assert pid is not None

        async def dies_half_way() -> AsyncIterator[bytes]:
            yield b"x" * (1 << 20)
            os.kill(pid, signal.SIGKILL)
            for _ in range(16):
                yield b"y" * (1 << 20)

        with pytest.raises(bridge.KernelDied):
            await s.upload(dies_half_way(), "big.bin", timeout=30)
        await s.restart()
        assert (await s.upload(b"fine", "small.bin")).size == 4
        assert await s.download("small.bin") == b"fine"
