"""Swarm configs through the managers' Engine API: the only Engine API *writes* edgeproxy makes.

Discovery (``discovery/``) only ever reads (GET). The ACME swarm storage keeps its objects as
Docker configs — created (``POST /configs/create``), listed (``GET /configs``, data included),
relabelled (``POST /configs/{id}/update``, only labels may change) and deleted
(``DELETE /configs/{id}``) — through this separate client, so the writes are in one place.

Managers are tried in order: one that is down or not a manager (503) passes the call to the next;
a swarm without a leader (``NoLeader``) or any other answer is the caller's to handle.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from edgeproxy.discovery.docker_api import (
    APIError,
    DockerClient,
    Endpoint,
    ManagerUnavailable,
    _classify,
    _message,
    filters,
)

CONFLICT = 409
NOT_FOUND = 404


class ConfigWriter(DockerClient):
    """One manager, with the write calls discovery has no use for."""

    async def request(self, method: str, path: str, query: Mapping[str, str] | None = None, body: Any = None) -> Any:
        """``method /<version><path>``; the decoded JSON answer (None when empty) for 2xx, else
        the engine's error as ``APIError`` (``status`` 409: the name is taken; 404: no such id)."""
        data = json.dumps(body).encode() if body is not None else None

        async def call() -> tuple[int, bytes]:
            return await self._exchange(method, await self._prefix() + path, query, data)

        try:
            status, raw = await asyncio.wait_for(call(), self.timeout)
        except TimeoutError:
            raise ManagerUnavailable(self.url, 0, f"no answer within {self.timeout:g}s") from None
        if 200 <= status < 300:
            try:
                return json.loads(raw) if raw.strip() else None
            except ValueError as e:
                raise APIError(self.url, status, f"bad JSON: {e}") from None
        raise _classify(self.url, status, _message(raw))


class SwarmConfigs:
    """Docker configs on whichever manager answers."""

    def __init__(self, endpoints: Sequence[Endpoint], timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("no manager to ask")
        self.clients = [ConfigWriter(ep, timeout) for ep in endpoints]

    async def _call(self, method: str, path: str, query: Mapping[str, str] | None = None, body: Any = None) -> Any:
        last: APIError | None = None
        for i, client in enumerate(list(self.clients)):
            try:
                result = await client.request(method, path, query, body)
            except ManagerUnavailable as e:
                last = e
                continue
            if i:  # remember who answers: ask it first next time
                self.clients.remove(client)
                self.clients.insert(0, client)
            return result
        assert last is not None
        raise last

    async def create(self, name: str, labels: Mapping[str, str], data: bytes) -> str:
        """The new config's id; ``APIError`` with status 409 when ``name`` exists (the managers'
        Raft store decides: of two creators of one name, exactly one succeeds)."""
        body = {"Name": name, "Labels": dict(labels), "Data": base64.b64encode(data).decode("ascii")}
        answer = await self._call("POST", "/configs/create", body=body)
        return str(answer["ID"]) if isinstance(answer, dict) and "ID" in answer else ""

    async def list(self, *, labels: Sequence[str] = (), name: str | None = None) -> list[dict[str, Any]]:
        """Configs with every label of ``labels`` (``key=value``) and, when given, exactly ``name``."""
        query: dict[str, list[str]] = {}
        if labels:
            query["label"] = list(labels)
        if name is not None:
            query["name"] = [name]
        found = await self._call("GET", "/configs", {"filters": filters(**query)} if query else None)
        out = [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []
        if name is not None:  # the engine's name filter matches prefixes too
            out = [c for c in out if c.get("Spec", {}).get("Name") == name]
        return out

    async def inspect(self, config_id: str) -> dict[str, Any]:
        found = await self._call("GET", f"/configs/{quote(config_id)}")
        if not isinstance(found, dict):
            raise APIError("", 0, f"config {config_id}: not an object")
        return found

    async def update_labels(
        self, config_id: str, version: int, spec: Mapping[str, Any], labels: Mapping[str, str]
    ) -> None:
        """Replace the labels (the only thing a config update may change); fails when the config
        changed since ``version`` was read (the managers compare versions)."""
        body = {**spec, "Labels": dict(labels)}
        await self._call("POST", f"/configs/{quote(config_id)}/update", {"version": str(version)}, body)

    async def delete(self, config_id: str) -> bool:
        """True when deleted, False when it was already gone."""
        try:
            await self._call("DELETE", f"/configs/{quote(config_id)}")
        except APIError as e:
            if e.status == NOT_FOUND:
                return False
            raise
        return True

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Config events (create, update, remove) from the first manager that streams them."""
        async for event in self.clients[0].events({"filters": filters(type=["config"])}):
            yield event


def config_data(config: Mapping[str, Any]) -> bytes:
    """A listed config's data (``Spec.Data``, base64); ``ValueError`` when it is not there."""
    try:
        return base64.b64decode(str(config["Spec"]["Data"]), validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"config without readable data: {e}") from None


def config_labels(config: Mapping[str, Any]) -> dict[str, str]:
    labels = config.get("Spec", {}).get("Labels") if isinstance(config.get("Spec"), dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
