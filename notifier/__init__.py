"""The WebSocket notifier: live positions and job events to customer apps (its own issue)."""
