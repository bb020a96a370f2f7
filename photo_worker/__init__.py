"""The photo worker: a Kafka consumer of `tasks.v1` that processes proof photos outside any
request and completes their jobs (photo_worker/worker.py), and sweeps the blob store."""
