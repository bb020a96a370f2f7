-- A job's links are read on every change of the job (the relay's write-through), counted
-- for the per-job cap and revoked together: by job. The relay's sweep deletes the links
-- that ended long ago: by expiry.
-- Exception (squawk), kept as applied: this migration ran before the online-migration
-- rules (docs/operations.md, "Migrations") on every database there is; a new migration
-- builds and drops indexes CONCURRENTLY and changes no column under a long lock.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX share_links_job ON share_links (job_id, expires_at);
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX share_links_expires ON share_links (expires_at);
