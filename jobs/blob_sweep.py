"""The blob sweep: what the blob store keeps, and for how long.

An upload is stored before the transaction that refers to it commits, so a request that
fails after storing (the job changed meanwhile, the database went away) leaves a blob no
task refers to: an orphan, removed once it is `orphan_after_s` old (past any transaction
that could still refer to it). A proof's raw upload carries what the phone put in it (its
EXIF location, too): it is kept `raw_keep_s` after its task finished, for disputes, then
removed. The cleaned photo and the thumbnail (`<task id>-photo`, `-thumbnail`) stay.
"""

import asyncio
import logging
import re
from dataclasses import dataclass

from jobs.blobs import BlobStore
from runtime.clock import Clock, SystemClock
from runtime.postgres import Pool

log = logging.getLogger(__name__)
UPLOAD_KEY = re.compile(r"^[0-9a-f]{64}$")  # content-addressed: an upload as received


@dataclass(frozen=True)
class SweepLimits:
    """When an unreferenced upload is an orphan, how long a proof's raw upload is kept, and how much
    one sweep removes."""

    orphan_after_s: float = 3600.0
    raw_keep_s: float = 7 * 86400.0
    batch: int = 1000


async def sweep_blobs(
    pool: Pool, blobs: BlobStore, limits: SweepLimits, clock: Clock | None = None
) -> int:
    """Removes up to a batch of orphans and expired raw uploads; returns how many."""
    orphaned_before = (clock or SystemClock()).wall() - limits.orphan_after_s
    old = await asyncio.to_thread(blobs.stored_before, orphaned_before, limits.batch)
    uploads = [key for key in old if UPLOAD_KEY.match(key)]
    if not uploads:
        return 0
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT input ->> 'blob' FROM tasks WHERE input ->> 'blob' = ANY(%s)"
            " GROUP BY 1 HAVING bool_or(status = 'pending'"
            " OR updated_at > now() - make_interval(secs => %s))",
            [uploads, limits.raw_keep_s],
        )
        kept = {row[0] for row in await cur.fetchall()}
    gone = [key for key in uploads if key not in kept]
    for key in gone:
        await asyncio.to_thread(blobs.delete, key)
    if gone:
        log.info("blob sweep: %d orphaned or expired uploads removed", len(gone))
    return len(gone)
