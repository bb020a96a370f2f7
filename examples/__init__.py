"""Two small client apps, as a client developer writes them against the platform's
published contract (docs/api.md, docs/notifier.md): no import from the platform's code."""
