"""Contracts: declarations of what data looks like, shared by the connectors that land it and the engines that
read it. Pure Python (no Spark at import): the MQTT bridge and the source registry use them too."""
