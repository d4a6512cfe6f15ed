"""The wire contract between the host and the kernel: every name both sides must agree on.

Defined here, on the kernel side (which needs nothing but ipykernel), and loaded by the host
from this very file (``bridge.core.wire``), so the two ends cannot drift apart.

Calls and records (comm ``EXECUTE_COMM``, opened by the host once per kernel)::

    host -> kernel  {"kind": "execute", "code": str, "meta": {...}}   a call
                    {"kind": "ping"}                                  the ready handshake
    kernel -> host  {"kind": "pong", "python": "3.x.y", "pid": n}     its answer
    kernel -> host  {"kind": "reply", "status": "ok", "value": {"data", "metadata", ...}}
                    (the value as an execute_result's content, in the reply rather than in a
                    message of its own; absent without a value or on ipykernel < 7)
                    (with "binary": the value, when it holds bytes or NumPy arrays, encoded
                    as _wire does, its buffers those of the message)
                    or {"kind": "reply", "fallback": True}
                    {"kind": "attestation", "record": {...}}          attest() inside a call
                    {"kind": "variables", "variables": {...}}         capture_variables
                {"kind": "binary", "value": ...}   the value, when it holds bytes or arrays,
                                                   of a plain execute_request (ipykernel < 7)

A plain ``execute_request`` carries the same ``meta`` under ``metadata[META_KEY]``.

Backends (comm ``BACKEND_COMM``, one per backend)::

    host -> kernel  {"id": 7, "method": "increment", "params": {...}}    a call
                    {"cancel": 7}                                      its timeout passed
    kernel -> host  {"hello": {"class", "name", "pid", "concurrent"}}  answer to comm_open
                    {"id": 7, "result": ...} or {"id": 7, "error": {"ename", "evalue", ...}}
                    {"events": [{"event": type, "data": ..., "nbuf": n}, ...]}

Files (comm ``FILES_COMM``, opened by the host once per kernel; ``_files.py``), every path
relative to the kernel's working folder; *n* is the host's id of the operation::

    host -> kernel  {"id": n, "op": "put", "path", "size": s|None, "max_file", "max_total"}
                    {"id": n, "op": "data"} + [bytes]   a chunk of the upload
                    {"id": n, "op": "end"}              rename the temporary file into place
                    {"id": n, "op": "get", "path", "max_file"}
                    {"id": n, "op": "ack"}              one chunk taken: send one more
                    {"id": n, "op": "abort"}            the host gave up: drop the transfer
                    {"id": n, "op": "list", "path"}  /  {"id": n, "op": "remove", "path"}
    kernel -> host  {"id": n, "ok": {...}}              the answer (a file's or folder's info)
                    {"id": n, "ack": bytes_written}     a chunk of an upload is on disk
                    {"id": n, "seq": k} + [bytes]       a chunk of a download
                    {"id": n, "error": {"reason", "message"}}   and the operation is over

Values travel as JSON with binary buffers for arrays and bytes (``_wire.py``).
"""

from __future__ import annotations

EXECUTE_COMM = "kernel-bridge"  # comm target of calls and their per-call records
BACKEND_COMM = "kernel-bridge.backend"  # comm target of a backend's calls and events
META_KEY = "kernel_bridge"  # execute_request metadata key holding a call's options
METHODS = "__methods__"  # the built-in backend call behind the host's backend.methods()

# The "kind" of a message on EXECUTE_COMM.
EXECUTE = "execute"
PING = "ping"
PONG = "pong"
REPLY = "reply"
ATTESTATION = "attestation"
VARIABLES = "variables"
BINARY = "binary"
REPLY_VALUE = "value"  # the key of a reply's value (an execute_result's content)
REPLY_BINARY = "binary"  # the key of a reply's value itself, when it holds bytes or arrays

FILES_COMM = "kernel-bridge.files"  # comm target of file transfers
# The "op" of a message on FILES_COMM.
PUT = "put"
DATA = "data"
END = "end"
GET = "get"
ACK = "ack"
ABORT = "abort"
LIST = "list"
REMOVE = "remove"
