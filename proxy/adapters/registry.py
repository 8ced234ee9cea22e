"""Which surfaces imagegate serves and how each provider `kind` is built from its settings.

One place that knows every adapter, so `proxy.app` stays free of provider details. Surfaces are all
mounted (their routes are cheap and prefixed by the surface name); a model is served only if a
configured provider lists it, whichever surface the client used.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..fetch import AddressPolicy, public_only
from ..settings import ProviderSettings, Settings
from .base import Provider
from .openai_surface import OpenAISurface
from .surface import Surface


def image_address_policy(config: ProviderSettings) -> AddressPolicy:
    """Public addresses, plus the networks the operator admitted explicitly (`image_url_networks`)."""
    networks = [ipaddress.ip_network(network, strict=False) for network in config.image_url_networks]
    if not networks:
        return public_only

    def policy(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return public_only(address) or any(address in network for network in networks)

    return policy


def build_provider(name: str, config: ProviderSettings, settings: Settings) -> Provider:
    """The provider for a non-OpenAI, non-demo `kind`."""
    common: dict[str, Any] = {
        "base_url": config.base_url or "",
        "api_key": config.api_key(),
        "timeout_s": config.timeout_s,
        "connect_timeout_s": config.connect_timeout_s,
    }
    if config.kind == "stability":
        from .stability import StabilityUpstream

        return StabilityUpstream(name, **common)
    if config.kind == "google":
        from .google import GoogleUpstream

        return GoogleUpstream(name, **common)
    fetching: dict[str, Any] = {
        "image_url_hosts": config.image_url_hosts,
        "address_policy": image_address_policy(config),
        "image_max_bytes": config.image_max_bytes,
        "image_fetch_timeout_s": config.image_fetch_timeout_s,
    }
    if config.kind == "bfl":
        from .bfl import BFLUpstream

        return BFLUpstream(name, poll_interval_s=config.poll_interval_s, **common, **fetching)
    if config.kind == "replicate":
        from .replicate import ReplicateUpstream

        return ReplicateUpstream(name, poll_interval_s=config.poll_interval_s, **common, **fetching)
    if config.kind == "fal":
        from .fal import FalUpstream

        return FalUpstream(name, poll_interval_s=config.poll_interval_s, **common, **fetching)
    raise ValueError(f"provider {name!r}: unknown kind {config.kind!r}")


def default_surfaces() -> list[Surface]:
    from .bfl_surface import BFLSurface
    from .fal_surface import FalSurface
    from .google_surface import GoogleSurface
    from .replicate_surface import ReplicateSurface
    from .stability_surface import StabilitySurface

    return [OpenAISurface(), StabilitySurface(), BFLSurface(), ReplicateSurface(), FalSurface(), GoogleSurface()]
