"""The `/admin/` page in a real headless chromium (Debian's package), driven by Playwright's core
package from npm: filtering the trail, opening a record with its image, approving a flagged image.

Needs: `apt-get install -y chromium nodejs npm` and `npm ci --prefix tests/browser`
(or `npm install`); skips, saying so, when any of them is missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from proxy.app import GATEWAY
from proxy.stores.audit import AuditQuery, ReviewQuery
from tests.conftest import ADMIN_KEY, make_settings
from tests.proxy.test_audit_api import flagging_stages, generate

HERE = Path(__file__).parent
CHROMIUM = os.environ.get("IMAGEGATE_CHROMIUM", "/usr/bin/chromium")
INSTALL = "apt-get install -y chromium nodejs npm && npm ci --prefix tests/browser"


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"chromium not found at {CHROMIUM} (install: {INSTALL})"
    if shutil.which("node") is None:
        return f"node not found (install: {INSTALL})"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core is not installed in tests/browser (run: npm ci --prefix tests/browser)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


async def test_admin_page_filters_opens_a_record_and_approves_a_flagged_image(tmp_path: Path, start_gateway) -> None:
    settings = make_settings(tmp_path, audit={"purge_interval_s": 0})
    server, base = await start_gateway(settings, stages=flagging_stages)
    async with aiohttp.ClientSession() as session:
        await generate(session, base, "a quiet harbour at dawn")
        flagged = await generate(session, base, "flagme: a street scene")
        await generate(session, base, "a mountain hut", user="u-2")
    process = await asyncio.create_subprocess_exec(
        "node", str(HERE / "admin_page.mjs"), base.removesuffix("/v1"), ADMIN_KEY, flagged["audit_id"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=HERE,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    except TimeoutError:
        process.kill()
        raise
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert text.strip().endswith("ok"), text

    audit = server.app[GATEWAY].audit
    items = await audit.review_items(ReviewQuery(status=None))
    assert [(i["audit_id"], i["status"], i["note"]) for i in items] == [(flagged["audit_id"], "approved", "reviewed in the browser test")]
    reviews = await audit.query(AuditQuery(outcome="review"))
    assert len(reviews) == 1 and reviews[0]["review"]["decision"] == "approve"
    assert (await audit.verify()).ok
