"""The floor of an HTTP round trip for bench/http_service.py: a bare tornado server.

    .venv/bin/python bench/http_floor.py SIZE

One handler, ``POST /execute``: it checks the ``Authorization`` header against $FLOOR_TOKEN,
parses the JSON body and answers a fixed JSON body of SIZE bytes (the size of the service's
answer to the same request). It prints ``port N`` once it listens on 127.0.0.1, and stops at
the end of its standard input (the benchmark holds the pipe).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import tornado.web


def answer_of(size: int) -> bytes:
    """A JSON object of exactly *size* bytes (at least 12)."""
    head = b'{"result":2,"pad":"'
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


class Execute(tornado.web.RequestHandler):
    def initialize(self, answer: bytes, token: str) -> None:
        self.answer = answer
        self.expected = f"token {token}"

    def post(self) -> None:
        if self.request.headers.get("Authorization") != self.expected:
            raise tornado.web.HTTPError(401)
        json.loads(self.request.body)
        self.set_header("Content-Type", "application/json")
        self.finish(self.answer)


async def main() -> None:
    answer = answer_of(int(sys.argv[1]))
    app = tornado.web.Application(
        [("/execute", Execute, {"answer": answer, "token": os.environ["FLOOR_TOKEN"]})]
    )
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    print(f"port {port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark goes away
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
