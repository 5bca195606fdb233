"""Contracts: what payloads and tables look like and how silver tables are built — configuration models only.

A leaf of the package: nothing here imports Spark (or a lakehouse module that does), so configuration is
checked without a session, and the connectors that land data (the MQTT bridge, the source registry) and the
engines that read it share one declaration.
"""
