"""Adapters: the real (AWS, HTTP) and in-memory implementations of the ports."""
