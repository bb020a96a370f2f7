"""Who may hold a connection before proving who they are, pure: no I/O.

A connection costs memory and a slot from its handshake, and proves nothing until its
first message (auth, up to `auth_timeout_s` later). So connections still waiting for
their auth are counted per process and per client address, and past either cap a new
handshake is refused. An unknown share token costs a database read: each client address
may fail that lookup a few times a second (a bucket), past which its share auths are
refused without a read.
"""

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address


def client_address(peer: str | None, forwarded_for: Iterable[str]) -> str:
    """The client's address: the nearest address in X-Forwarded-For that is not one of our
    own tiers (each appends who connected to it), or the peer's when none is named."""
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    if peer is not None and not _is_proxy(peer):
        return peer  # not through our tiers: what it forwards is its own claim
    for hop in reversed(hops):
        if not _is_proxy(hop):
            return hop
    return peer or "unknown"


def _is_proxy(address: str) -> bool:
    """Our own tiers (nginx, HAProxy) connect from the loopback."""
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return ip.is_loopback


@dataclass
class Waiting:
    """Connections accepted and not yet authenticated."""

    max_total: int
    max_per_client: int
    _by_client: Counter[str] = field(default_factory=Counter)

    def admits(self, client: str) -> bool:
        total = sum(self._by_client.values())
        return total < self.max_total and self._by_client[client] < self.max_per_client

    def arrived(self, client: str) -> None:
        self._by_client[client] += 1

    def done(self, client: str) -> None:
        """Authenticated, refused or gone: it waits no more."""
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]


@dataclass
class FailedLookups:
    """A bucket per client address of unknown share tokens it may try: `per_s` a second
    refill it, up to `burst`. Only failures are charged: a link that works costs nothing
    here, however often it is opened."""

    per_s: float
    burst: float
    max_clients: int = 100_000
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def may_try(self, client: str, now: float) -> bool:
        return self._level(client, now) >= 1.0

    def failed(self, client: str, now: float) -> None:
        self._buckets[client] = (self._level(client, now) - 1.0, now)
        self._buckets.move_to_end(client)
        if len(self._buckets) > self.max_clients:  # the least recent goes: bounded memory
            self._buckets.popitem(last=False)

    def _level(self, client: str, now: float) -> float:
        level, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, level + (now - at) * self.per_s)
