"""The ACME protocol (RFC 8555) for one directory, on certbot's ``acme`` library.

Why that library rather than our own JWS client: it is the protocol client of the most used ACME
client (certbot), kept in step with Let's Encrypt (nonce retry on ``badNonce``, ``Retry-After``
while polling, ACME Renewal Information, profiles), typed, and its only new dependencies are
``josepy`` and ``requests``; a hand-written client would have to relearn all of that. Its one
cost: it is blocking (``requests``). Every method here blocks too and is meant to run in a thread
(``asyncio.to_thread``), never on the event loop; one ``AcmeClient`` may serve several threads at
once, because each call builds its own ``ClientNetwork`` (nonces and an HTTP session are per
network, and not thread-safe).

An order goes in two steps so that the caller can publish the answers in between (on its board,
in the swarm) before the CA is told to look: ``order`` places it and returns the challenges to
answer, ``validate`` answers them, waits for the CA and returns the certificate chain.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import requests
from acme import challenges, errors, messages
from acme.client import ClientNetwork, ClientV2
from josepy.b64 import b64encode
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from edgeproxy import __version__
from edgeproxy.acme.board import Challenge, ChallengeType
from edgeproxy.acme.keys import load_ec_key, make_csr

USER_AGENT = f"edgeproxy/{__version__}"
# The answer to a challenge is an empty JSON object (RFC 8555 section 7.5.1); the library's
# HTTP01Response serialises to exactly that, for any challenge type.
_EMPTY_RESPONSE = challenges.HTTP01Response()


class AcmeError(Exception):
    """An ACME exchange failed. ``retry_after``: seconds the server asked us to wait (its
    ``Retry-After``), if it said; ``account_missing``: the CA does not know our account (a test CA
    restarted, or the account was deactivated): register again."""

    def __init__(self, message: str, *, retry_after: float | None = None, account_missing: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.account_missing = account_missing


@dataclass(frozen=True, slots=True)
class Account:
    """A registered account: its key (ECDSA P-256, PKCS#8 PEM) and its URL at the CA."""

    directory: str
    email: str | None
    key_pem: bytes
    uri: str


@dataclass(slots=True)
class PendingOrder:
    """An order placed, its challenges not answered yet."""

    names: tuple[str, ...]
    challenges: list[Challenge]
    """What to publish before ``validate``: one per authorization still pending."""
    _client: ClientV2
    _net: _Network
    _order: messages.OrderResource
    _bodies: list[messages.ChallengeBody] = field(default_factory=list)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 10.2.3: seconds, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Network(ClientNetwork):
    """The library's network, remembering the ``Retry-After`` of the last error response (its
    ``messages.Error`` carries the problem document but not the headers)."""

    last_retry_after: str | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        if response.status_code >= 400:
            self.last_retry_after = response.headers.get("Retry-After")
        return response


class AcmeClient:
    """One ACME directory. Blocking; thread-safe (see the module's docstring)."""

    def __init__(self, directory: str, *, ca_file: str | None = None, timeout: float = 30.0) -> None:
        self.directory_url = directory
        self.verify: bool | str = ca_file if ca_file else True
        self.timeout = timeout
        self._directory: messages.Directory | None = None
        self._lock = threading.Lock()

    # -- account ------------------------------------------------------------------------------
    def register(self, key_pem: bytes, email: str | None) -> Account:
        """Create the account of this key (or find it: the CA answers with the existing one for a
        key it knows). The caller makes sure only one registration runs (SPEC: one account per
        directory and email, registered once)."""
        net = self._network(key_pem, None)
        with _errors(net):
            client = ClientV2(self._get_directory(net), net)
            regr = client.new_account(messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True))
        return Account(self.directory_url, email, key_pem, regr.uri)

    # -- orders -------------------------------------------------------------------------------
    def order(
        self, account: Account, names: Sequence[str], cert_key_pem: bytes, prefer: Sequence[ChallengeType]
    ) -> PendingOrder:
        """Place an order for ``names`` (CSR signed with ``cert_key_pem``) and choose, for each
        authorization still pending, the first type of ``prefer`` the CA offers."""
        net = self._network(account.key_pem, account.uri)
        thumbprint = b64encode(net.key.thumbprint()).decode("ascii") if net.key else ""
        with _errors(net):
            client = ClientV2(self._get_directory(net), net)
            orderr = client.new_order(make_csr(cert_key_pem, names))
        pending = PendingOrder(tuple(names), [], client, net, orderr)
        for authzr in orderr.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue  # an authorization the CA still holds as valid (reused): nothing to answer
            name = str(authzr.body.identifier.value)
            offered = {_type_of(cb): cb for cb in authzr.body.challenges}
            chosen = next((t for t in prefer if t in offered), None)
            if chosen is None:
                raise AcmeError(f"{name}: the CA offers {', '.join(sorted(offered))} and none of {', '.join(prefer)}")
            body = offered[chosen]
            token = str(body.chall.to_partial_json()["token"])
            pending.challenges.append(Challenge(chosen, name, token, f"{token}.{thumbprint}"))
            pending._bodies.append(body)
        return pending

    def validate(self, pending: PendingOrder, timeout: float = 90.0) -> str:
        """Tell the CA the answers are up, wait for it to validate them and to issue; return the
        certificate chain (PEM, leaf first)."""
        client = pending._client
        net = pending._net
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        with _errors(net):
            for body in pending._bodies:
                client.answer_challenge(body, _EMPTY_RESPONSE)
            order = client.poll_and_finalize(pending._order, deadline)
        chain = order.fullchain_pem
        if not chain:
            raise AcmeError("the CA finalized the order but returned no certificate")
        return str(chain)

    # -- renewal information (RFC 9773) -----------------------------------------------------
    def renewal_info(self, chain_pem: bytes) -> tuple[float | None, float]:
        """(when to renew, when to ask again), epoch seconds. When to renew is None when the CA
        offers no ``renewalInfo`` (pebble 2.4 does not); it is a random time in the window the CA
        suggests otherwise, as RFC 9773 section 4.2 asks."""
        net = self._network(None, None)
        with _errors(net):
            client = ClientV2(self._get_directory(net), net)
            try:
                when, ask_again = client.renewal_time(chain_pem)
            except errors.ARIError as e:
                raise AcmeError(f"renewal information: {e}", retry_after=_until(e.retry_after)) from None
        return (when.timestamp() if when is not None else None), ask_again.timestamp()

    def offers_renewal_info(self) -> bool:
        net = self._network(None, None)
        with _errors(net):
            directory = self._get_directory(net)
        try:
            directory["renewalInfo"]
        except KeyError:
            return False
        return True

    # -- plumbing -----------------------------------------------------------------------------
    def _network(self, key_pem: bytes | None, account_uri: str | None) -> _Network:
        key = JWKEC(key=load_ec_key(key_pem)) if key_pem is not None else None
        account = None
        if account_uri is not None:
            account = messages.RegistrationResource(uri=account_uri, body=messages.Registration())
        # verify_ssl goes to requests' ``verify``, which takes a CA file too (typed bool there)
        net = _Network(key, account=account, alg=ES256, verify_ssl=cast(bool, self.verify), user_agent=USER_AGENT)
        net._default_timeout = int(self.timeout)  # the constructor's parameter is typed int
        return net

    def _get_directory(self, net: ClientNetwork) -> messages.Directory:
        with self._lock:
            directory = self._directory
        if directory is None:
            directory = ClientV2.get_directory(self.directory_url, net)
            with self._lock:
                self._directory = directory
        return directory


def _type_of(body: messages.ChallengeBody) -> str:
    return str(body.chall.to_partial_json().get("type", ""))


def _until(when: datetime.datetime) -> float:
    return max(0.0, when.timestamp() - time.time())


@contextlib.contextmanager
def _errors(net: _Network) -> Iterator[None]:
    """Turns whatever the library and ``requests`` raise into ``AcmeError`` with a message an
    operator can act on, and the server's ``Retry-After`` when it sent one."""
    net.last_retry_after = None
    try:
        yield
    except AcmeError:
        raise
    except messages.Error as e:
        raise AcmeError(
            f"the CA refused: {_problem(e)}",
            retry_after=parse_retry_after(net.last_retry_after),
            account_missing=e.code == "accountDoesNotExist",
        ) from None
    except errors.ValidationError as e:
        raise AcmeError(f"validation failed: {_validation_failures(e)}") from None
    except errors.TimeoutError:
        raise AcmeError("the CA did not finish the order in time") from None
    except requests.RequestException as e:
        raise AcmeError(f"cannot reach the CA: {_root_cause(e)}") from None
    except Exception as e:  # the library's other errors, and what its JSON decoding raises
        raise AcmeError(
            f"{type(e).__name__}: {_short(e)}", retry_after=parse_retry_after(net.last_retry_after)
        ) from None


def _problem(e: messages.Error) -> str:
    code = e.code or e.typ or "error"
    text = f"{code}: {e.detail}" if e.detail else code
    for sub in e.subproblems or ():
        text += f"; {sub.identifier.value if sub.identifier else ''}: {sub.detail}"
    return text


def _validation_failures(e: errors.ValidationError) -> str:
    parts: list[str] = []
    for authzr in e.failed_authzrs:
        for chall in authzr.body.challenges:
            if chall.error is not None:
                parts.append(f"{authzr.body.identifier.value} ({_type_of(chall)}): {_problem(chall.error)}")
    return "; ".join(parts) or "an authorization is invalid"


def _root_cause(e: BaseException) -> str:
    """The innermost reason of a ``requests`` error ("[Errno 111] Connection refused"), not its
    three nested wrappers."""
    seen: set[int] = set()
    inner: BaseException = e
    while id(inner) not in seen:
        seen.add(id(inner))
        nxt = inner.__cause__ or inner.__context__ or (inner.args[0] if inner.args else None)
        if not isinstance(nxt, BaseException):
            break
        inner = nxt
    text = str(inner)
    if "Errno" in text:  # urllib3 puts the OS error at the end: "...: [Errno 111] Connection refused"
        text = text[text.index("[Errno") :].rstrip("')\"")
    return f"{type(e).__name__}: {_short(text)}" if inner is e else _short(text)


def _short(e: BaseException | str) -> str:
    text = str(e)
    return text if len(text) <= 300 else text[:300] + "..."
