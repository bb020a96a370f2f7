"""Ids of drivers, customers and every principal: the one rule all services check."""

from typing import Annotated, Final

from pydantic import Field

# Printable, no spaces, bounded. An id becomes a Kafka key, a primary key and a URL path
# segment, so NUL bytes, control characters and megabyte ids must never reach any of them.
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
MAX_ID_LENGTH: Final = 128
EntityId = Annotated[str, Field(pattern=ID_PATTERN)]
