"""Continuous mode: the supervisor that keeps every streaming query running, and the topic-to-topic
processors (the connectors these queries run live in :mod:`lakehouse.sources`, the rollups in
:mod:`lakehouse.gold`)."""
