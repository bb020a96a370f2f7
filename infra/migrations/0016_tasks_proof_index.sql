-- migrate: no-transaction
-- A job's proof photo (GET /v1/jobs/{id}/proof) is its latest done proof task: read by
-- job. Built online (CONCURRENTLY, outside a transaction): every completion writes tasks.
-- A build stopped halfway leaves an invalid index behind, so the step drops any first;
-- both steps can run again.
DROP INDEX CONCURRENTLY IF EXISTS tasks_job_proof;
-- migrate: step
CREATE INDEX CONCURRENTLY tasks_job_proof ON tasks (job_id, updated_at DESC)
    WHERE kind = 'proof_photo' AND status = 'done';
