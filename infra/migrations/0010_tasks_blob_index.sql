-- The blob sweep asks which tasks refer to an upload (api/blob_sweep.py).
-- Exception (squawk), kept as applied: this migration ran before the online-migration
-- rules (docs/operations.md, "Migrations") on every database there is; a new migration
-- builds and drops indexes CONCURRENTLY and changes no column under a long lock.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX tasks_blob ON tasks ((input ->> 'blob'));
