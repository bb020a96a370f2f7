-- migrate: no-transaction
-- A job's proof photo (GET /v1/jobs/{id}/proof) is its latest done proof task: read by
-- job. Built online (CONCURRENTLY, outside a transaction): every completion writes tasks.
-- A build stopped halfway leaves an invalid index behind, so the step drops any first;
-- both steps can run again.
DROP INDEX CONCURRENTLY IF EXISTS tasks_job_proof;
-- migrate: step
-- Exception (squawk): the step before drops any index of that name, so this step runs
-- again after a stop halfway.
-- squawk-ignore prefer-robust-stmts
CREATE INDEX CONCURRENTLY tasks_job_proof ON tasks (job_id, updated_at DESC)
    WHERE kind = 'proof_photo' AND status = 'done';
