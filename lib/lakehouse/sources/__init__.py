"""Sources: the registry and the connectors that land each kind of source in bronze."""
