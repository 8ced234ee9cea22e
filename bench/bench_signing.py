"""Benchmark: C2PA signing of a 1024x1024 PNG, JPEG and WebP against a SHA-256 of the same bytes.

Target (issue 5): signing at most 3x the time of hashing the same bytes, under 8 KB added per
image. Both are measured in the same process, same run, on the same bytes; medians of many runs
after a warm-up. Run from the repository root:

    python3 bench/bench_signing.py [--runs 50] [--size 1024] [--breakdown] [--json PATH]

`--breakdown` also times the parts of a signature (building the manifest, the ECDSA signature
alone, a Builder that hashes but streams through Python) to show where the time goes.
This script must never be imported by tests and never asserts on timings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provenance import (
    ManifestInfo,
    ManifestSigner,
    ProvenanceSettings,
    ensure_dev_credentials,
    load_signing_credentials,
)

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def generated_like_image(size: int) -> np.ndarray:
    """Smooth shapes plus mild noise: compresses like a generated image, unlike pure noise."""
    rng = np.random.default_rng(42)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    red = 127 + 120 * np.sin(6 * x + 2 * y)
    green = 127 + 120 * np.cos(5 * y - 3 * x * y)
    blue = 127 + 120 * np.sin(9 * x * y + 1)
    pixels = np.stack([red, green, blue], axis=-1) + rng.normal(0, 6, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def median_seconds(func: Callable[[], object], runs: int) -> float:
    for _ in range(3):
        func()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def info() -> ManifestInfo:
    return ManifestInfo(
        model="gpt-image-1",
        provider="openai",
        verdicts=[
            {"stage": "prompt_filter", "action": "allow", "category": None, "score": 0.0},
            {"stage": "output_classifier", "action": "allow", "category": "nsfw", "score": 0.02},
        ],
        policy_version="sha256:" + "ab" * 32,
        licence={"model": "gpt-image-1", "decision": "allowed", "rule": "default"},
        audit_id="01J0000000000000000000000",
        request_id="req_0123456789abcdef",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {"size": args.size, "runs": args.runs, "formats": {}}

    with tempfile.TemporaryDirectory() as keys_dir:
        dev = ensure_dev_credentials(Path(keys_dir))
        settings = ProvenanceSettings(
            cert_chain_file=dev.cert_chain_file, private_key_file=dev.private_key_file
        )
        signer = ManifestSigner(load_signing_credentials(settings), settings)
    pixels = generated_like_image(args.size)
    manifest_info = info()

    print(
        f"C2PA signing vs SHA-256 of the same bytes, {args.size}x{args.size}, "
        f"median of {args.runs} runs (ES256, no thumbnail, no TSA, no verify-after-sign)"
    )
    header = (
        f"{'format':<6} {'bytes':>10} {'sha256 ms':>10} {'sign ms':>9} {'ratio':>7} {'added B':>8}"
    )
    print(header)
    print("-" * len(header))
    for fmt, media_type in FORMATS.items():
        data = encode(pixels, fmt)
        hash_s = median_seconds(lambda d=data: hashlib.sha256(d).digest(), args.runs)
        sign_s = median_seconds(
            lambda d=data, m=media_type: signer.sign(d, m, manifest_info), args.runs
        )
        added = signer.sign(data, media_type, manifest_info).bytes_added
        results["formats"][fmt] = {
            "bytes": len(data), "sha256_ms": hash_s * 1e3, "sign_ms": sign_s * 1e3,
            "ratio": sign_s / hash_s, "bytes_added": added,
        }
        print(
            f"{fmt:<6} {len(data):>10,} {hash_s * 1e3:>10.3f} {sign_s * 1e3:>9.3f} "
            f"{sign_s / hash_s:>6.2f}x {added:>8,}"
        )
        if args.breakdown:
            breakdown(signer, data, media_type, manifest_info, args.runs, hash_s)
    signer.close()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def breakdown(
    signer: ManifestSigner,
    data: bytes,
    media_type: str,
    manifest_info: ManifestInfo,
    runs: int,
    hash_s: float,
) -> None:
    """Where signing time goes, measured piece by piece (same data, same run)."""
    import c2pa

    from provenance.manifest import plan_manifest
    from provenance.sign import _carries_c2pa, tiny_png

    settings = ProvenanceSettings()
    plan = plan_manifest(manifest_info, settings, upstream=None)
    context = signer._context
    pieces = {
        "plan manifest (Python)": lambda: plan_manifest(manifest_info, settings, upstream=None),
        "check for upstream C2PA": lambda: _carries_c2pa(data, media_type),
        "Builder() only": lambda: c2pa.Builder(plan.definition, context=context).close(),
        "fixed cost: sign a 1x1 PNG": lambda: signer.sign(tiny_png(), "image/png", manifest_info),
    }
    for name, func in pieces.items():
        seconds = median_seconds(func, runs)
        print(f"         {name:<28} {seconds * 1e3:8.3f} ms  ({seconds / hash_s:5.2f}x hash)")


if __name__ == "__main__":
    sys.exit(main())
