"""A fleet of drivers for the fault tests: every ping posted to ingest, every answer
counted, the acknowledged pings kept to look for in the database afterwards."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from infra.stack import Stack
from runtime.auth import issue_token
from schemas.auth import Role
from tests.support.driving import ping_at


class Fleet:
    """Drivers posting one ping a request to ingest, every answer counted by ping."""

    def __init__(self, stack: Stack, drivers: int) -> None:
        self.url = stack.urls("ingest")[0] + "/v1/pings"
        key = stack.config.jwt_private_key
        self.drivers = [f"drv-{uuid.uuid4().hex[:8]}" for _ in range(drivers)]
        self.tokens = {d: issue_token(key, sub=d, role=Role.DRIVER) for d in self.drivers}
        self.acked: list[str] = []
        self.answers: list[int] = []
        self.sent = 0

    async def post(self, client: httpx.AsyncClient, driver: str) -> int:
        self.sent += 1
        ts = datetime.now(UTC) - timedelta(milliseconds=self.sent)
        ping = ping_at(ts, float(self.sent % 1000))
        try:
            r = await client.post(
                self.url,
                json={"pings": [ping]},
                headers={"Authorization": f"Bearer {self.tokens[driver]}"},
            )
            status = r.status_code
        except httpx.TimeoutException:
            status = 0  # no answer at all: the contract promises one
        self.answers.append(status)
        if status == 202:
            self.acked.append(ping["ping_id"])
        return status

    async def round(self, client: httpx.AsyncClient) -> list[int]:
        """One ping from every driver at once."""
        return list(await asyncio.gather(*(self.post(client, d) for d in self.drivers)))
