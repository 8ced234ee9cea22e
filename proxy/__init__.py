"""imagegate's proxy: the aiohttp application, CLI, config, authentication, the request pipeline,
provider adapters, stores and metrics. The only package that does network or database I/O."""

__version__ = "0.1.0"
