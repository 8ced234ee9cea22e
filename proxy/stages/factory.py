"""`full_stages`: the production chain, with every stage whose library is configured.

`proxy.app.default_stages` is the bare chain (authentication, request parsing, upstream, and an
explicit `skipped` record for each policy stage); this factory replaces each skipped stage with the
real one as its library is wired in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..pipeline import Stage
from ..settings import Settings

if TYPE_CHECKING:
    from ..app import StageDeps


def full_stages(settings: Settings, deps: StageDeps) -> Sequence[Stage]:
    from ..app import default_stages

    return default_stages(settings, deps)
