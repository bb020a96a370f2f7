-- The stream records a job's arrival through jobs/events.py, the one way every writer
-- records a job event (the api, the photo worker, the stream); the PL/pgSQL copy of the
-- event's shape (migration 0007) is called by nothing any more.
-- Exception (squawk): nothing calls it any more (above).
-- squawk-ignore ban-drop-function
DROP FUNCTION IF EXISTS job_arrived(uuid);
