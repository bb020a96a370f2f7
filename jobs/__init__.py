"""The jobs domain, below the services: the state machine, the only SQL over jobs and
their events, tasks, share links and the outbox, the relay that publishes the outbox, and
proof photos with the store they live in."""
