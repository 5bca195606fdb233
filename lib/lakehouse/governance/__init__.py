"""Governance: a contract per lake table (owner, columns, classification, retention, freshness SLA)."""
