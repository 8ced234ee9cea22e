"""The BFL upstream adapter against the fake BFL API: polling, errors, and the SSRF guard on the
signed result URLs it fetches (redirects to private addresses, names resolving to loopback, hosts off
the allow-list, oversized and slow answers: all refused with an error that says why)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from proxy.adapters.bfl import BFLUpstream
from proxy.errors import ContentPolicyError, UpstreamBadResponseError, UpstreamError, UpstreamStatusError
from proxy.exchange import GenerationRequest
from tests.fakes.bfl import FakeBFL
from tests.fakes.provider_harness import only_loopback, serve


class StaticResolver(AbstractResolver):
    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address = self.addresses.get(host, host)
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeBFL, TestServer, str]]:
    fake = FakeBFL(pending_polls=1)
    server, url = await serve(fake.app())
    try:
        yield fake, server, url
    finally:
        await server.close()


async def upstream(url: str, **kwargs: Any) -> BFLUpstream:
    options: dict[str, Any] = {"image_url_hosts": ["127.0.0.1"], "address_policy": only_loopback, "poll_interval_s": 0.01}
    options.update(kwargs)
    provider = BFLUpstream("bfl", base_url=url, api_key="bfl-upstream-key", timeout_s=5, **options)
    await provider.start()
    return provider


def request(**kwargs: Any) -> GenerationRequest:
    return GenerationRequest(operation="generate", model="flux-pro-1.1", prompt="a red fox", **kwargs)


async def test_submit_poll_fetch_and_cost_hint(fake) -> None:
    bfl, _, url = fake
    provider = await upstream(url)
    try:
        result = await provider.generate(request(size="1024x1024", extra={"safety_tolerance": 2}))
    finally:
        await provider.close()
    assert len(result.images) == 1 and result.images[0].media_type == "image/jpeg"
    assert bfl.submitted[0]["model"] == "flux-pro-1.1"
    assert bfl.submitted[0]["body"] == {"prompt": "a red fox", "output_format": "png", "width": 1024, "height": 1024, "safety_tolerance": 2}
    assert bfl.polls[bfl.submitted[0]["id"]] == 2  # Pending once, then Ready
    assert result.metadata["cost_hint"] == {"images": 1, "width": 1024, "height": 1024, "megapixels": 1.049, "billed_megapixels": 1}
    assert result.metadata["seed"] == 42


async def test_credits_reported_by_bfl_are_the_actual_cost(fake) -> None:
    """BFL's submit says what each task costs (`cost`, in credits of $0.01): the price table uses
    that figure over its own list price, summed over the tasks of an n>1 request."""
    from policies.pricing import PriceTable

    bfl, _, url = fake
    bfl.cost_credits = 4.5
    provider = await upstream(url)
    try:
        result = await provider.generate(request(size="1440x1024", n=2))
    finally:
        await provider.close()
    assert result.metadata["cost_hint"]["credits"] == 9.0 and "credits" not in {k for k in result.metadata if k != "cost_hint"}
    table = PriceTable.load()
    assert table.actual_cost(request(size="1440x1024", n=2), result, "bfl") == 0.09
    assert table.estimate_cost(request(size="1440x1024", n=2), "bfl") == 0.08  # the list price: $0.04 each
    bfl.cost_credits = None  # without a reported figure, the table's price for what was produced
    provider = await upstream(url)
    try:
        unreported = await provider.generate(request(size="1440x1024"))
    finally:
        await provider.close()
    assert "credits" not in unreported.metadata["cost_hint"]
    assert table.actual_cost(request(size="1440x1024"), unreported, "bfl") == 0.04


async def test_moderated_and_failed_tasks(fake) -> None:
    bfl, _, url = fake
    provider = await upstream(url)
    try:
        bfl.status = "Request Moderated"
        with pytest.raises(ContentPolicyError):
            await provider.generate(request())
        bfl.status = "Error"
        with pytest.raises(UpstreamError, match="Error"):
            await provider.generate(request())
    finally:
        await provider.close()


async def test_wrong_key_is_the_providers_own_error(fake) -> None:
    _, _, url = fake
    provider = BFLUpstream("bfl", base_url=url, api_key="wrong", timeout_s=5)
    await provider.start()
    try:
        with pytest.raises(UpstreamStatusError) as caught:
            await provider.generate(request())
    finally:
        await provider.close()
    assert caught.value.status == 403 and b"Not authenticated" in caught.value.body


@pytest.mark.parametrize("target", ["http://10.0.0.5/x.png", "http://169.254.169.254/latest/meta-data", "http://[::1]/x.png"])
async def test_redirect_to_private_address_is_refused(fake, target: str) -> None:
    bfl, _, url = fake
    bfl.sample_url = f"{url}/redirect?to={target}"
    provider = await upstream(url)
    try:
        with pytest.raises(UpstreamBadResponseError) as caught:
            await provider.generate(request())
    finally:
        await provider.close()
    assert caught.value.code == "upstream_unsafe_image_url"
    assert "was refused" in caught.value.message


async def test_name_resolving_to_loopback_is_refused(fake) -> None:
    bfl, server, url = fake
    bfl.sample_url = f"http://delivery.bfl-test.example:{server.port}/delivery/x.jpeg"
    # Public addresses only (the default policy); the name is on the allow-list but resolves to loopback.
    provider = BFLUpstream(
        "bfl", base_url=url, api_key="bfl-upstream-key", timeout_s=5, poll_interval_s=0.01,
        image_url_hosts=["*.bfl-test.example"], resolver=StaticResolver({"delivery.bfl-test.example": "127.0.0.1"}),
    )
    await provider.start()
    try:
        with pytest.raises(UpstreamBadResponseError) as caught:
            await provider.generate(request())
    finally:
        await provider.close()
    assert "resolves to 127.0.0.1, which is not a public address" in caught.value.message


async def test_host_off_the_allow_list_is_refused(fake) -> None:
    bfl, server, url = fake
    bfl.sample_url = f"http://localhost:{server.port}/delivery/x.jpeg"
    provider = await upstream(url)
    try:
        with pytest.raises(UpstreamBadResponseError) as caught:
            await provider.generate(request())
    finally:
        await provider.close()
    assert "allow-list" in caught.value.message


async def test_oversized_and_slow_samples_are_refused(fake) -> None:
    bfl, _, url = fake
    provider = await upstream(url, image_max_bytes=100_000, image_fetch_timeout_s=0.5)
    try:
        bfl.sample_url = f"{url}/big"
        with pytest.raises(UpstreamBadResponseError, match="larger than 100000 bytes"):
            await provider.generate(request())
        bfl.sample_url = f"{url}/slow"
        with pytest.raises(UpstreamBadResponseError, match="took longer than"):
            await provider.generate(request())
    finally:
        await provider.close()


async def test_polling_url_on_a_foreign_host_is_not_followed(fake) -> None:
    bfl, _, url = fake
    bfl.base_url = "http://attacker.example"  # the submit answer points polls elsewhere
    provider = await upstream(url)
    try:
        with pytest.raises(UpstreamBadResponseError):
            await provider.generate(request())  # polls went to the API host; the sample URL's host is refused
    finally:
        await provider.close()
    assert sum(bfl.polls.values()) >= 1
