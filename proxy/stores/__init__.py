"""The proxy's state: the audit log, limit counters and served assets, each behind an interface
with an embedded default and a scale-out backend."""
