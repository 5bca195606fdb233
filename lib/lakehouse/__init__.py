"""Lakehouse Workbench: a notebook-first lakehouse on one laptop, the same code on a cluster."""

__version__ = "0.1.0"
