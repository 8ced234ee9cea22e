"""The stages of the request pipeline, one per module, and `default_stages`, the chain in order."""
