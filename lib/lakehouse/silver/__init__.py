"""Silver: validated, typed, deduplicated tables, with quarantine for what fails."""
