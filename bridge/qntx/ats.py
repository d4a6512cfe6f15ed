"""attest() into QNTX: every record the code makes goes to QNTX's ATSStoreService as well.

A record reaches QNTX as it is made (the bridge's on_attest), with the id and timestamp the
code saw. A send that fails is logged and changes nothing for the call that made it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from typing import Any

import grpc

from .protocol import ats_pb, ats_rpc

log = logging.getLogger("bridge.qntx")

SEND_TIMEOUT = 5.0


def _names(values: Any) -> list[str]:
    items = values if isinstance(values, list) else [] if values is None else [values]
    return [v if isinstance(v, str) else json.dumps(v) for v in items]


def _seconds(stamp: Any) -> int:
    try:
        return int(datetime.datetime.fromisoformat(str(stamp)).timestamp())
    except ValueError:
        return int(time.time())


def attestation(record: dict[str, Any]) -> Any:
    """The ATSStore Attestation of a record attest() made."""
    return ats_pb.Attestation(
        id=str(record.get("id", "")),
        subjects=_names(record.get("subjects")),
        predicates=_names(record.get("predicates")),
        contexts=_names(record.get("contexts")),
        actors=_names(record.get("actors")),
        timestamp=_seconds(record.get("timestamp")),
        source=str(record.get("source") or "python"),
        attributes=json.dumps(record.get("attributes") or {}),
        created_at=int(time.time()),
    )


class AtsForwarder:
    """Sends attest() records to an ATSStoreService at *endpoint* (host:port)."""

    def __init__(self, endpoint: str, auth_token: str) -> None:
        for scheme in ("http://", "grpc://"):
            endpoint = endpoint.removeprefix(scheme)
        self.endpoint = endpoint
        self.auth_token = auth_token
        self._channel = grpc.aio.insecure_channel(endpoint)
        self._stub = ats_rpc.ATSStoreServiceStub(self._channel)
        self._pending: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def __call__(self, record: dict[str, Any]) -> None:
        """The bridge's on_attest: starts the send and returns at once."""
        task = asyncio.ensure_future(self._send(record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, record: dict[str, Any]) -> None:
        request = ats_pb.CreateAttestationRequest(
            auth_token=self.auth_token, attestation=attestation(record)
        )
        try:
            reply = await self._stub.CreateAttestation(request, timeout=SEND_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            self.failed += 1
            log.warning(
                "attestation %s was not stored in QNTX (%s): %s %s",
                record.get("id"),
                self.endpoint,
                exc.code().name,
                exc.details(),
            )
            return
        except Exception as exc:
            self.failed += 1
            log.warning("attestation %s was not stored in QNTX: %r", record.get("id"), exc)
            return
        if reply.success:
            self.sent += 1
        else:
            self.failed += 1
            log.warning("QNTX refused attestation %s: %s", record.get("id"), reply.error)

    async def flush(self, timeout: float = SEND_TIMEOUT) -> None:
        """Wait (up to *timeout*) for the sends already started."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout)

    async def close(self) -> None:
        await self.flush()
        for task in list(self._pending):
            task.cancel()
        await self._channel.close()
