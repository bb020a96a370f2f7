-- A job's links are read on every change of the job (the relay's write-through), counted
-- for the per-job cap and revoked together: by job. The relay's sweep deletes the links
-- that ended long ago: by expiry.
CREATE INDEX share_links_job ON share_links (job_id, expires_at);
CREATE INDEX share_links_expires ON share_links (expires_at);
