"""The cached views (docs/services.md, "Api: reads"): a job, a share link's public view
and a driver's position, how each is loaded from the database, answered over HTTP (ETag,
304, Cache-Control), and written through after a change."""

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from fastapi.responses import Response
from psycopg import AsyncConnection

from api.config import ApiSettings
from api.reads.cache import Envelope, Loaded, View, ViewCache
from api.reads.extras import with_live_position
from api.reads.positions import SELECT_POSITION, DriverPosition
from api.reads.routing import ReadRouter, write_position
from jobs import store as job_store
from jobs.errors import NotFound
from jobs.rules import Owners, check_visible, visible
from runtime.clock import Clock, SystemClock
from runtime.http import ApiError, error_response
from runtime.postgres import Pool
from schemas.auth import Principal
from schemas.jobs import Job, SharedJob, share_token_hash


@dataclass(frozen=True)
class Views:
    """The three cached views (a job, a share link's view, a driver's position) with their
    freshness, and their Cache-Control."""

    job: View
    share: View
    position: View

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> "Views":
        stale, local = settings.view_stale_s, settings.local_cache_s
        return cls(
            job=View("job", settings.job_view_fresh_s, stale),
            share=View("share", settings.share_view_fresh_s, stale, local),
            position=View("position", settings.position_view_fresh_s, stale, local),
        )

    def cache_control(self, view: View) -> str:
        """User views stay in the user's own cache; share views are public. An edge may
        serve a share view stale while one request refreshes it, for at most one more
        max-age (the refresh replaces it, with a 404 once the link is gone), and while we
        fail, for at most `stale_s`: a link that ended is never shown for long."""
        if view is self.share:
            fresh, stale = int(view.fresh_s), int(view.stale_s)
            return (
                f"public, max-age={fresh}, stale-while-revalidate={fresh}, stale-if-error={stale}"
            )
        return f"private, max-age={int(view.fresh_s)}"


@dataclass(frozen=True)
class ReadPath:
    """What the read routes share: the cache, its views, their loaders and the router."""

    cache: ViewCache
    views: Views
    loaders: "ViewLoaders"
    router: ReadRouter


def render_job(job: Job) -> Loaded:
    return Loaded(orjson.dumps(job.model_dump(mode="json")), 0, (job.customer_id, job.driver_id))


def render_share(job: Job, expires_at: Any) -> bytes:
    view = SharedJob(
        status=job.status,
        driver_position=job.driver_position,
        eta_seconds=job.eta_seconds,
        eta_basis=job.eta_basis,
        updated_at=job.updated_at,
        expires_at=expires_at,
    )
    return orjson.dumps(view.model_dump(mode="json"))


class ViewLoaders:
    """Reads each view from where the read router sends it."""

    def __init__(self, router: ReadRouter, clock: Clock | None = None) -> None:
        self._router = router
        self._clock = clock or SystemClock()

    async def job(self, job_id: UUID, min_lsn: int, *, critical: bool = False) -> Loaded:
        sql = f"{job_store.SELECT} WHERE job_id = %s"
        got, job = await self._router.read_then(
            "job", sql, [job_id], self._with_position, min_lsn=min_lsn, critical=critical
        )
        if job is None:
            raise NotFound(f"no job {job_id}")
        rendered = render_job(job)
        return Loaded(rendered.body, got.lsn, rendered.owners)

    async def share(self, token_hash: bytes) -> Loaded:
        got, job = await self._router.read_then(
            "share", job_store.SELECT_SHARED, [token_hash], self._with_position
        )
        if job is None:
            raise NotFound("no such share link, or it has expired")
        expires_at = got.rows[0]["link_expires_at"]
        return Loaded(render_share(job, expires_at), got.lsn, expires_at=expires_at.timestamp())

    async def position(self, driver_id: str) -> Loaded:
        got = await self._router.read("position", SELECT_POSITION, [driver_id])
        if not got.rows:
            raise NotFound(f"no position known for driver {driver_id}")
        body = DriverPosition.model_validate(got.rows[0]).model_dump(mode="json")
        return Loaded(orjson.dumps(body), got.lsn)

    async def _with_position(
        self, conn: AsyncConnection[Any], rows: list[dict[str, Any]]
    ) -> Job | None:
        """The job of the first row, with its driver's live position while under way."""
        if not rows:
            return None
        job = job_store.from_row(rows[0])
        await with_live_position(conn, job, self._clock.now())
        return job


def answer(env: Envelope, if_none_match: str | None, cache_control: str) -> Response:
    """The view, or 304 when the client holds it already (If-None-Match)."""
    headers = {"ETag": env.etag, "Cache-Control": cache_control}
    if etag_matches(if_none_match, env.etag):
        return Response(status_code=304, headers=headers)
    return Response(env.body, media_type="application/json", headers=headers)


async def job_answer(
    read_path: ReadPath, who: Principal, job_id: UUID, if_none_match: str | None
) -> Response:
    """`GET /v1/jobs/{id}` once the caller is known: the route's and the fast path's."""
    view, key = read_path.views.job, str(job_id)
    env = await read_path.cache.get(
        view, key, lambda lsn: read_path.loaders.job(job_id, lsn), reader=who.key
    )
    if (owners := _owners(env)) is None or not visible(who, owners):
        # The view may predate the caller's assignment: a refusal rests on the primary.
        env = await read_path.cache.put(
            view, key, await read_path.loaders.job(job_id, 0, critical=True)
        )
        check_visible(who, _owners(env), job_id)
    return answer(env, if_none_match, read_path.views.cache_control(view))


def _owners(env: Envelope) -> Owners | None:
    return Owners(*env.owners) if env.owners else None


async def share_answer(read_path: ReadPath, token: str, if_none_match: str | None) -> Response:
    """`GET /v1/share/{token}`; keyed by the token's hash, as stored: the write-through
    finds a job's links so."""
    token_hash = share_token_hash(token)
    view = read_path.views.share
    try:
        env = await read_path.cache.get(
            view, token_hash.hex(), lambda _: read_path.loaders.share(token_hash)
        )
    except NotFound as exc:
        # Public as the view is: an edge keeps this 404 for the view's max-age in place of
        # the link's last 200 (a link that expired or was revoked is gone there as well),
        # and answers a token asked for again without us.
        gone = {"Cache-Control": f"public, max-age={int(view.fresh_s)}"}
        return error_response(ApiError(404, str(exc), headers=gone))
    return answer(env, if_none_match, read_path.views.cache_control(view))


async def position_answer(
    read_path: ReadPath, driver_id: str, if_none_match: str | None
) -> Response:
    """`GET /v1/drivers/{id}/position` once the caller's role is checked."""
    view = read_path.views.position
    env = await read_path.cache.get(
        view, driver_id, lambda _: read_path.loaders.position(driver_id)
    )
    return answer(env, if_none_match, read_path.views.cache_control(view))


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in ("*", etag) for tag in tags)


async def write_through(
    pool: Pool,
    cache: ViewCache,
    views: Views,
    job_ids: list[str],
    max_links: int,
    clock: Clock,
) -> None:
    """After the changes of `job_ids` were committed and their events published: stores
    each job's new view and those of its live share links, read on the primary at its
    current position (so no older view replaces them), in one Redis round trip; and drops
    the views of its links that ended within the last minute (revoked, or cancelled with
    the job). Bounded: a job has at most `max_links` live links."""
    items: list[tuple[View, str, Loaded]] = []
    ended: list[str] = []
    async with pool.connection() as conn:
        for raw_id in dict.fromkeys(job_ids):
            job_id = UUID(raw_id)
            lsn = await write_position(conn)
            job = await job_store.read(conn, job_id)
            if job is None:
                continue
            now = clock.now()
            await with_live_position(conn, job, now)
            rendered = render_job(job)
            items.append((views.job, raw_id, Loaded(rendered.body, lsn, rendered.owners)))
            links = await job_store.recent_share_links(conn, job_id, 2 * max_links)
            for token_hash, expires_at in links:
                if expires_at <= now:
                    ended.append(token_hash.hex())
                    continue
                shared = Loaded(
                    render_share(job, expires_at), lsn, expires_at=expires_at.timestamp()
                )
                items.append((views.share, token_hash.hex(), shared))
    await cache.put_many(items)
    await cache.forget(views.share, ended)
