"""Structured Streaming jobs: sources, sinks and the transforms between them."""
