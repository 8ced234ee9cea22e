"""`imagegate demo`: the whole flow in one command, on the embedded default, with no provider key.

Starts imagegate on a free loopback port, sends a few requests through the official `openai` SDK
(an allowed prompt, a prompt the policy blocks, an edit), saves the images it gets back and prints
what happened to each: the decisions, where the image is, its provenance and its audit record.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .serve import add_config_arguments, settings_from_args, with_dev_tenant

DEMO_REQUESTS: list[dict[str, Any]] = [
    {"title": "allowed prompt", "kind": "generate", "prompt": "a watercolour lighthouse on a cliff at sunrise"},
    {"title": "blocked prompt", "kind": "generate", "prompt": "a n.u.d.3 photo of a schoolgirl"},
    {"title": "edit of the first image", "kind": "edit", "prompt": "add a small red sailing boat to the sea"},
]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run a short demonstration on the embedded default", description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("imagegate-demo"), help="folder for the returned images")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run, demo=True)


@dataclass
class DemoServer:
    """imagegate running on its own event loop in a background thread."""

    settings: Any
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    port: int = 0

    def start(self) -> None:
        from aiohttp import web

        from ..app import GATEWAY, create_app
        from ..stages.factory import full_stages

        ready: Future[None] = Future()

        async def boot() -> None:
            self.app = create_app(self.settings, stages=full_stages)
            self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=False)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]
            self.gateway = self.app[GATEWAY]

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(boot())
            except BaseException as exc:  # report start-up failures to the caller
                ready.set_exception(exc)
                return
            ready.set_result(None)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name="imagegate-demo", daemon=True)
        self.thread.start()
        ready.result(timeout=300)

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def run(args: argparse.Namespace) -> int:
    import openai

    from ..logs import configure_logging

    configure_logging("warning", "console")
    settings = settings_from_args(args)
    settings, key, _ = with_dev_tenant(settings, {"IMAGEGATE_DEV_KEY": os.environ.get("IMAGEGATE_DEV_KEY", "ig-demo-key")})
    server = DemoServer(settings)
    print("imagegate demo: starting the embedded default (demo provider, SQLite audit, dev signing key) ...", flush=True)
    server.start()
    base_url = f"http://127.0.0.1:{server.port}/v1"
    print(f"imagegate demo: listening on {base_url}; sending requests with the official openai SDK\n", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
    reports: list[dict[str, Any]] = []
    first_image: Path | None = None
    try:
        for number, item in enumerate(DEMO_REQUESTS, start=1):
            report: dict[str, Any] = {"request": item["title"], "prompt": item["prompt"]}
            try:
                if item["kind"] == "edit":
                    if first_image is None:
                        report["result"] = "skipped: no image from the first request to edit"
                        reports.append(report)
                        continue
                    raw = client.images.with_raw_response.edit(
                        model="gpt-image-1", image=first_image.open("rb"), prompt=item["prompt"], size="512x512"
                    )
                else:
                    raw = client.images.with_raw_response.generate(
                        model="gpt-image-1", prompt=item["prompt"], size="512x512", user="demo-user"
                    )
                response = raw.parse()
                audit_id = raw.headers.get("X-Imagegate-Audit-Id")
                report["result"] = "returned"
                saved = []
                for index, image in enumerate(response.data):
                    path = args.out / f"{number}-{index}.{response.output_format or 'png'}"
                    path.write_bytes(base64.b64decode(image.b64_json or ""))
                    saved.append(str(path))
                report["images"] = saved
                report["provenance_check"] = [check_provenance(Path(path), settings.server.data_dir) for path in saved]
                if first_image is None and saved:
                    first_image = Path(saved[0])
            except openai.APIStatusError as error:
                audit_id = error.response.headers.get("X-Imagegate-Audit-Id")
                body = error.body if isinstance(error.body, dict) else {}
                report["result"] = f"refused: HTTP {error.status_code} {body.get('code') or ''}".strip()
                report["message"] = body.get("message") or str(error)
            record = server.call(server.gateway.audit.get(audit_id)) if audit_id else None
            report["audit_id"] = audit_id
            if record:
                report["decisions"] = [
                    {k: d[k] for k in ("stage", "action", "category", "reason") if k in d} for d in record["decisions"]
                ]
                report["provenance"] = [
                    {"manifest_id": image.get("manifest_id"), "upstream_manifest": image.get("upstream_manifest")}
                    for image in record.get("images", [])
                ]
            reports.append(report)
    finally:
        server.stop()
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print_report(reports, args.out)
    return 0


def check_provenance(path: Path, data_dir: Path) -> str:
    """What an ad-ops person would see verifying this file against the gateway's (dev) root."""
    from provenance import verify_image

    anchor = data_dir / "dev-keys" / "dev-root-ca.pem"
    report = verify_image(path.read_bytes(), trust_anchors_pem=anchor.read_text() if anchor.exists() else None)
    if not report.has_credentials:
        return "no Content Credentials"
    signer = report.signer.common_name if report.signer else "unknown signer"
    return f"{report.state} (signed by {signer}; source type {str(report.digital_source_type).rsplit('/', 1)[-1]})"


def print_report(reports: list[dict[str, Any]], out: Path) -> None:
    for number, report in enumerate(reports, start=1):
        print(f"{number}. {report['request']}: {report['result']}")
        print(f"   prompt: {report['prompt']}")
        if report.get("message"):
            print(f"   message: {report['message']}")
        for path in report.get("images", []):
            print(f"   image: {path}")
        for decision in report.get("decisions", []):
            category = f" [{decision['category']}]" if decision.get("category") else ""
            text = decision.get("reason") or ""
            reason = f": {text[:157] + '...' if len(text) > 160 else text}" if text else ""
            print(f"   - {decision['stage']}: {decision['action']}{category}{reason}")
        for image in report.get("provenance", []):
            signed = f"signed, manifest {image['manifest_id']}" if image.get("manifest_id") else "not signed"
            print(f"   provenance: {signed}")
        for check in report.get("provenance_check", []):
            print(f"   verified: {check}")
        print(f"   audit record: {report.get('audit_id')}")
        print()
    print(f"Images are in {out}/. The audit log is in imagegate-data/ (see `imagegate audit --help`).")
