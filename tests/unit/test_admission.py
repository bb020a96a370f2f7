"""Who may hold a notifier connection before authenticating, pure: the client's address
through our tiers, the waiting counts, the bucket of unknown share tokens."""

from notifier.admission import FailedLookups, Waiting, client_address


def test_the_client_is_the_nearest_address_our_tiers_name() -> None:
    # nginx appends the client, HAProxy appends nginx (loopback): the client is the last
    # address that is not ours; what the client itself claimed comes before and is ignored.
    assert client_address("127.0.0.1", ["6.6.6.6, 203.0.113.7, 127.0.0.1"]) == "203.0.113.7"
    assert client_address("127.0.0.1", ["203.0.113.7", "127.0.0.1"]) == "203.0.113.7"
    assert client_address("127.0.0.1", []) == "127.0.0.1"  # the local fleet, direct
    assert client_address("127.0.0.1", ["127.0.0.1, 127.0.0.1"]) == "127.0.0.1"
    # Not through our tiers: its X-Forwarded-For is its own claim, not believed.
    assert client_address("198.51.100.9", ["10.0.0.1"]) == "198.51.100.9"
    assert client_address(None, []) == "unknown"


def test_waiting_connections_are_capped_per_client_and_in_all() -> None:
    waiting = Waiting(max_total=3, max_per_client=2)
    for _ in range(2):
        assert waiting.admits("a")
        waiting.arrived("a")
    assert not waiting.admits("a") and waiting.admits("b")
    waiting.arrived("b")
    assert not waiting.admits("c")  # 3 in all
    waiting.done("a")
    assert waiting.admits("a") and waiting.admits("c")


def test_only_failed_lookups_are_charged_and_the_bucket_refills() -> None:
    lookups = FailedLookups(per_s=1.0, burst=3.0)
    for _ in range(3):
        assert lookups.may_try("a", now=0.0)
        lookups.failed("a", now=0.0)
    assert not lookups.may_try("a", now=0.0) and lookups.may_try("b", now=0.0)
    assert not lookups.may_try("a", now=0.5) and lookups.may_try("a", now=1.0)
    lookups.failed("a", now=1.0)
    assert lookups.may_try("a", now=10.0)  # refilled, to the burst at most
    for _ in range(3):
        lookups.failed("a", now=10.0)
    assert not lookups.may_try("a", now=10.0)


def test_the_buckets_are_bounded_in_number() -> None:
    lookups = FailedLookups(per_s=0.0, burst=1.0, max_clients=2)
    for client in ("a", "b", "c"):
        lookups.failed(client, now=0.0)
    assert lookups.may_try("a", now=0.0)  # forgotten: the least recent went
    assert not lookups.may_try("c", now=0.0)
