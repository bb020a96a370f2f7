"""The notifier's error hierarchy: each ends a connection with the close code it names."""

from schemas.notifier import CloseCode


class NotifierError(Exception):
    """Base of the errors that end a connection; each carries the close code the client gets."""

    close_code: CloseCode = CloseCode.INTERNAL_ERROR


class BadMessage(NotifierError):
    """A client message that is not JSON of the protocol, or too large."""

    close_code = CloseCode.BAD_MESSAGE


class AuthFailed(NotifierError):
    """No valid token or share token in the first message, or none in time."""

    close_code = CloseCode.AUTH_FAILED


class Forbidden(NotifierError):
    """Not the caller's job, or no such job: the same answer, so nothing leaks."""

    close_code = CloseCode.FORBIDDEN


class SlowConsumer(NotifierError):
    """More output unsent than the limit: the client resumes when it can keep up."""

    close_code = CloseCode.SLOW_CONSUMER


class PeerGone(NotifierError):
    """No answer to a WebSocket ping within a ping interval."""

    close_code = CloseCode.INTERNAL_ERROR


class TooManySubscriptions(NotifierError):
    """A connection past its subscriptions' limit."""

    close_code = CloseCode.TOO_MANY_SUBSCRIPTIONS


class DatabaseUnavailable(NotifierError):
    """PostgreSQL did not answer in time; the client reconnects and resumes later."""

    close_code = CloseCode.TRY_AGAIN_LATER
