"""Contracts: what tables and payloads look like and how silver tables are built — configuration models only.

A leaf of the package: nothing here imports Spark or another lakehouse module, so configuration is checked
without a session and every layer may depend on it.
"""
