"""Fixtures shared by the proxy's store tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) on a free local port, for the module's tests."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] (dev extra) runs the S3 endpoint")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
