-- When a job was cancelled: its track ends there, as a completed job's ends at its
-- completion (a customer who cancels must not follow the driver afterwards). A cancelled
-- job changes no more, so its last update is its cancel. Nullable, no default: no rewrite.
ALTER TABLE jobs ADD COLUMN cancelled_at timestamptz;
UPDATE jobs SET cancelled_at = updated_at WHERE status = 'cancelled' AND cancelled_at IS NULL;
