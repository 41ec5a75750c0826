"""Outbound HTTP to URLs that job payloads name (webhooks), refusing internal destinations.

Decisions, after the OWASP SSRF prevention cheat sheet:

- The check runs when a connection opens, on the addresses resolved then, and the socket
  connects to one of exactly those addresses: DNS cannot answer one thing to the check and
  another to the connection (rebinding). Every connection is checked, whatever URL led to it.
- Every resolved address is checked; one internal address refuses the host (a DNS answer
  mixing public and internal addresses is refused).
- Refused: unspecified, loopback, link-local, multicast, private, reserved, and every other
  address Python's ``ipaddress`` does not call global (shared 100.64/10, documentation and
  benchmarking ranges...). An IPv4 address inside IPv6 (mapped ``::ffff:a.b.c.d``, 6to4,
  NAT64 ``64:ff9b::/96``) is judged by its IPv4 address. Decimal, octal and hex forms of IPv4
  are whatever the resolver makes of them, so they are checked like any other answer.
- A refusal names the kind of address, not the address a name resolved to (no internal DNS
  oracle for whoever reads the error).
- No proxy from the environment is used: a proxy would resolve and connect on our behalf.
- WEBHOOK_ALLOW_PRIVATE=1 turns the check off; WEBHOOK_ALLOWED_HOSTS lists host names (or
  literal addresses) let through as written in the URL, compared case-insensitively.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from .config import settings

NAT64 = ipaddress.ip_network("64:ff9b::/96")
KINDS = (  # (ipaddress flag, how a refusal describes it), the first that applies wins
    ("is_unspecified", "an unspecified address"),
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_private", "a private address"),
    ("is_reserved", "a reserved address"),
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(Exception):
    """An outbound connection aimed at an internal address; the message says why."""


def internal_kind(ip: Address) -> str | None:
    """How ``ip`` is internal ("a loopback address"...), or None for a public address."""
    for candidate in (_embedded_ipv4(ip), ip):
        if candidate is None:
            continue
        for flag, kind in KINDS:
            if getattr(candidate, flag):
                return kind
        if not candidate.is_global:
            return "a special-purpose address that is not globally reachable"
    return None


def _embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    if ip.version == 4:
        return None
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour


def unchecked(host: str) -> bool:
    """True if settings let ``host`` through without looking at its addresses."""
    if settings().flag("webhook_allow_private"):
        return True
    allowed = {h.strip().lower().rstrip(".") for h in settings().webhook_allowed_hosts.split(",")}
    return _normal(host) in allowed - {""}


def _normal(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def resolve(host: str, port: int) -> list[tuple]:
    """getaddrinfo answers for host:port, every one of them checked.

    Raises DestinationRefused if any answer is an internal address (unless the settings let
    the host through), socket.gaierror if the name does not resolve.
    """
    family = urllib3_connection.allowed_gai_family()
    answers = socket.getaddrinfo(host.strip("[]"), port, family, socket.SOCK_STREAM)
    if unchecked(host):
        return answers
    for *_, sockaddr in answers:
        kind = internal_kind(ipaddress.ip_address(sockaddr[0].partition("%")[0]))
        if kind:
            raise DestinationRefused(_refusal(host, kind))
    return answers


def _refusal(host: str, kind: str) -> str:
    try:
        ipaddress.ip_address(host.strip("[]"))
        where = f"{host} is {kind}"
    except ValueError:
        where = f"{host} resolves to {kind}"
    return (f"{where}; internal destinations are refused (WEBHOOK_ALLOW_PRIVATE=1 or "
            "WEBHOOK_ALLOWED_HOSTS lets them through)")


def check_url(url: str) -> None:
    """Raise DestinationRefused if ``url`` points at an internal address; connect nowhere.

    A host that does not resolve is not refused (nothing could be reached there).
    """
    parts = urlsplit(url)
    if not parts.hostname:
        return
    try:
        resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError, ValueError):
        return


class _Guarded:
    """Opens the socket to an address that ``resolve`` checked, never resolving again."""

    def _new_conn(self) -> socket.socket:
        try:
            answers = resolve(self.host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        try:
            return _connect_first(answers, self.timeout, self.source_address,
                                  self.socket_options)
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})",
            ) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") \
                from exc


def _connect_first(answers: list[tuple], timeout, source_address, socket_options):
    """Connect to the first answer that accepts (numeric addresses: no DNS lookup)."""
    error: OSError = OSError("getaddrinfo returned no address")
    for *_, sockaddr in answers:
        try:
            return urllib3_connection.create_connection(
                (sockaddr[0], sockaddr[1]), timeout, source_address=source_address,
                socket_options=socket_options)
        except OSError as exc:
            error = exc
    raise error


class _GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every connection goes through ``resolve``'s check."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool,
                                                   "https": _GuardedHTTPSPool}


def session() -> requests.Session:
    """A requests session that refuses internal destinations and ignores proxy settings.

    Requests through it raise DestinationRefused for an internal destination.
    """
    http = requests.Session()
    http.trust_env = False
    http.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = GuardedAdapter()
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http
