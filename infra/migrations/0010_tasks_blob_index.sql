-- The blob sweep asks which tasks refer to an upload (api/blob_sweep.py).
CREATE INDEX tasks_blob ON tasks ((input ->> 'blob'));
