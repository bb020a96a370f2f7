"""The stack in containers: the images' Dockerfiles (one folder each), their build
(images.py), the container runtime (run.py on engine.py, Podman's API) and the compose file
(compose.py, compose.yaml)."""
