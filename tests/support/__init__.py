"""Helpers the tests share (conftest.py files hold only fixtures and hooks)."""
