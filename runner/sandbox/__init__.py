"""Sandbox backends: where sessions run."""
