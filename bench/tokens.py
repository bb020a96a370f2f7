"""The simulated users' tokens, renewed before they expire, as an app refreshes its
session: services refuse tokens living longer than a day, and `up --simulate` runs for as
long as the stack does."""

from pathlib import Path

from runtime.auth import issue_token
from runtime.clock import Clock, SystemClock
from schemas.auth import Role


class Tokens:
    """Per-driver tokens for a simulated fleet, minted on first use."""

    TTL_S = 12 * 3600
    RENEW_BEFORE_S = 3600

    def __init__(self, private_key_path: Path, clock: Clock | None = None) -> None:
        self._key = private_key_path
        self._clock = clock or SystemClock()
        self._tokens: dict[tuple[str, Role], tuple[str, float]] = {}

    def get(self, sub: str, role: Role = Role.DRIVER) -> str:
        now = self._clock.wall()
        held = self._tokens.get((sub, role))
        if held is None or held[1] - now < self.RENEW_BEFORE_S:
            token = issue_token(self._key, sub=sub, role=role, ttl_s=self.TTL_S, clock=self._clock)
            held = (token, now + self.TTL_S)
            self._tokens[(sub, role)] = held
        return held[0]
