"""The challenge board: the answers to the ACME challenges in flight, for the data plane.

The control plane puts a challenge here before it asks the CA to validate it and takes it away
when the order is done; the supervisor pushes the board to the workers (``to_wire`` /
``apply_wire``, JSON, sent whole when ``version`` moves: it holds a handful of entries), and a
listener answers from it:

- HTTP-01 (RFC 8555 section 8.3): token -> key authorization, served at
  ``/.well-known/acme-challenge/<token>``;
- TLS-ALPN-01 (RFC 8737): name -> a self-signed certificate carrying SHA-256 of the key
  authorization, served to a ClientHello that offers ``acme-tls/1`` for that name.

A worker never receives the account key: a key authorization is the token and the account key's
public thumbprint, and the TLS-ALPN-01 certificate has a throw-away key of its own.

Entries come by *source* (this instance's own orders, or the swarm storage's view of every
instance's), as the server pools do: setting one source leaves the others alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ChallengeType = Literal["http-01", "tls-alpn-01"]
CHALLENGE_TYPES: tuple[ChallengeType, ...] = ("http-01", "tls-alpn-01")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge to answer: what the orderer publishes (and the swarm storage shares)."""

    type: ChallengeType
    name: str
    """The DNS name being validated."""
    token: str
    key_authorization: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "name": self.name, "token": self.token, "key_authorization": self.key_authorization}

    @classmethod
    def from_json(cls, d: Any) -> Challenge:
        """From stored JSON; ``ValueError`` when it is not one (the swarm holds what anyone wrote)."""
        if not isinstance(d, dict):
            raise ValueError("a challenge is a JSON object")
        fields = {k: d.get(k) for k in ("type", "name", "token", "key_authorization")}
        if not all(isinstance(v, str) and v for v in fields.values()):
            raise ValueError("a challenge needs type, name, token and key_authorization")
        if fields["type"] not in CHALLENGE_TYPES:
            raise ValueError(f"unknown challenge type {fields['type']!r}")
        return cls(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AlpnAnswer:
    """The acme-tls/1 certificate for one name (PEM, for ``tls.certificates.load_chain``)."""

    chain_pem: bytes
    key_pem: bytes


class ChallengeBoard:
    __slots__ = ("_alpn_made", "_sources", "http01", "tls_alpn01", "version")

    def __init__(self) -> None:
        self.http01: dict[str, str] = {}
        """token -> key authorization"""
        self.tls_alpn01: dict[str, AlpnAnswer] = {}
        """name -> acme-tls/1 certificate"""
        self.version = 0
        """Moves at every change: the supervisor pushes the board when it differs from the last sent."""
        self._sources: dict[str, frozenset[Challenge]] = {}
        # (name, key authorization) -> its certificate: a source re-set with the same challenge
        # (the swarm storage re-reads every few seconds) does not make a new key each time.
        self._alpn_made: dict[tuple[str, str], AlpnAnswer] = {}

    def set_source(self, source: str, challenges: Iterable[Challenge]) -> None:
        """The challenges ``source`` currently wants answered (replacing its previous set)."""
        new = frozenset(challenges)
        if self._sources.get(source, frozenset()) == new:
            return
        if new:
            self._sources[source] = new
        else:
            self._sources.pop(source, None)
        self._rebuild()

    def add(self, source: str, challenge: Challenge) -> None:
        self.set_source(source, self._sources.get(source, frozenset()) | {challenge})

    def remove(self, source: str, challenge: Challenge) -> None:
        self.set_source(source, self._sources.get(source, frozenset()) - {challenge})

    def challenges(self) -> frozenset[Challenge]:
        return frozenset().union(*self._sources.values())

    def _rebuild(self) -> None:
        http01: dict[str, str] = {}
        alpn: dict[str, AlpnAnswer] = {}
        wanted = sorted(self.challenges(), key=lambda c: (c.type, c.name, c.token))
        for c in wanted:
            if c.type == "http-01":
                http01[c.token] = c.key_authorization
            else:
                key = (c.name, c.key_authorization)
                made = self._alpn_made.get(key)
                if made is None:
                    from edgeproxy.acme.keys import tls_alpn_certificate  # cryptography: only for TLS-ALPN-01

                    made = self._alpn_made[key] = AlpnAnswer(*tls_alpn_certificate(c.name, c.key_authorization))
                alpn[c.name] = made
        live = {(c.name, c.key_authorization) for c in wanted if c.type == "tls-alpn-01"}
        self._alpn_made = {k: v for k, v in self._alpn_made.items() if k in live}
        self._replace(http01, alpn)

    def _replace(self, http01: dict[str, str], alpn: dict[str, AlpnAnswer]) -> None:
        if http01 != self.http01 or alpn != self.tls_alpn01:
            self.http01, self.tls_alpn01 = http01, alpn
            self.version += 1

    # -- wire form: supervisor -> workers -----------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "http01": dict(self.http01),
            "tls_alpn01": {
                name: {"chain": a.chain_pem.decode("ascii"), "key": a.key_pem.decode("ascii")}
                for name, a in self.tls_alpn01.items()
            },
        }

    def apply_wire(self, wire: Mapping[str, Any]) -> None:
        """Make this (worker's) board the supervisor's. ``ValueError`` for a malformed message,
        the board unchanged."""
        try:
            http01 = {str(k): str(v) for k, v in dict(wire["http01"]).items()}
            alpn = {
                str(name): AlpnAnswer(str(a["chain"]).encode("ascii"), str(a["key"]).encode("ascii"))
                for name, a in dict(wire["tls_alpn01"]).items()
            }
            version = int(wire["version"])
        except (KeyError, TypeError, ValueError, UnicodeEncodeError) as e:
            raise ValueError(f"bad challenge board message: {type(e).__name__}: {e}") from None
        self.http01, self.tls_alpn01, self.version = http01, alpn, version

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> ChallengeBoard:
        board = cls()
        board.apply_wire(wire)
        return board
