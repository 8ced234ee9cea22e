"""Decisions as pure code and data: prompt filter, limit and budget rules, licence rules, retention
rules. Nothing here touches the network, a database or the request exchange."""
