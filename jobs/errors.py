"""The jobs domain's errors. Each service maps them to its own answers (the api: to HTTP
in api/http_errors.py; the photo worker: to a refused proof)."""


class JobsError(Exception):
    """Base of every error the jobs domain raises on purpose."""


class NotFound(JobsError):
    """Nothing to show for this id (also for someone else's object)."""


class Forbidden(JobsError):
    """The caller's role may not do this, or the job is not theirs to act on."""


class Conflict(JobsError):
    """The job's status does not allow this transition."""


class IdempotencyKeyReused(JobsError):
    """An Idempotency-Key already used by this caller for a different request."""


class PhotoTooLarge(JobsError):
    """An upload past its size limit (refused before it is read whole)."""


class InvalidPhoto(JobsError):
    """Not a JPEG or PNG image, broken, or a decompression bomb."""
