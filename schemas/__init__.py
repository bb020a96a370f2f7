"""The wire contract shared by every service: models, topic names, roles. Imports nothing of ours."""
