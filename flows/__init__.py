"""Prefect flows: thin wiring, each task one library call."""
