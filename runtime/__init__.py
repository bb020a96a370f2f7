"""The small shared runtime every service uses. Imports only `schemas`."""
