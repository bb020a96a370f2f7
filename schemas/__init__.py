"""The wire contract shared by all services: models, topic names, roles. Imports nothing of ours."""
