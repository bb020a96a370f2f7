"""What the routes depend on, as `Annotated` dependencies over `app.state`, which
api/app.py `create_app` fills once (`State`). The routers are plain module-level
`APIRouter`s that declare these; nothing is closed over."""

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CollectorRegistry, Counter

from api.config import ApiSettings
from api.ops import LagMonitor
from api.overview import OverviewMonitor
from api.principal_limit import PrincipalLimit
from api.reads.fast import POSITION_ROLES
from api.reads.routing import Pools
from api.reads.views import ReadPath
from jobs.blobs import BlobStore
from runtime.auth import TokenVerifier, require_role
from runtime.clock import Clock
from runtime.http import bearer_credentials, bearer_scheme
from schemas.auth import Principal, Role


@dataclass(frozen=True)
class State:
    """Everything the api's routes share, built by `create_app` from the settings (the pools
    open in its lifespan). Its parts are safe for the tasks of one event loop."""

    settings: ApiSettings
    pools: Pools
    read_path: ReadPath
    verifier: TokenVerifier
    limit: PrincipalLimit
    blobs: BlobStore
    db_errors: Counter  # requests failed because the database did not answer
    lag: LagMonitor
    overview: OverviewMonitor
    # Tracks simplified at once: each is up to MAX_FIXES points of CPU work.
    simplifying: asyncio.Semaphore
    registry: CollectorRegistry  # the process's metrics
    clock: Clock


def state(request: Request) -> State:
    shared: State = request.app.state.api
    return shared


StateDep = Annotated[State, Depends(state)]


async def caller(
    shared: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> Principal:
    """The verified caller, let in by their request rate (401 or 429 otherwise)."""
    who = shared.verifier.verify(bearer_credentials(credentials))
    shared.limit.admit(who)
    return who


CallerDep = Annotated[Principal, Depends(caller)]


async def dispatcher_or_ops(who: CallerDep) -> Principal:
    return require_role(who, list(POSITION_ROLES))


async def ops(who: CallerDep) -> Principal:
    return require_role(who, [Role.OPS])


DispatcherOrOpsDep = Annotated[Principal, Depends(dispatcher_or_ops)]
OpsDep = Annotated[Principal, Depends(ops)]


def lag_monitor(shared: StateDep) -> LagMonitor:
    return shared.lag


def overview_monitor(shared: StateDep) -> OverviewMonitor:
    return shared.overview


LagMonitorDep = Annotated[LagMonitor, Depends(lag_monitor)]
OverviewMonitorDep = Annotated[OverviewMonitor, Depends(overview_monitor)]
