"""Benchmark: C2PA signing of a 1024x1024 PNG, JPEG and WebP against a SHA-256 of the same bytes.

Target (issue 5): signing at most 3x the time of hashing the same bytes, under 8 KB added per
image. Both are measured in the same process, same run, on the same bytes; medians of many runs
after a warm-up, hash and signatures timed in turn in every round. Run from the repository root:

    python3 bench/bench_signing.py [--runs 50] [--size 1024] [--breakdown] [--json PATH]

`sign ms` is `ManifestSigner.sign` as the proxy calls it (the data-hashed path for these images)
with an ES256 certificate, the default; `Ed25519 ms` the same with an Ed25519 certificate (the
faster of the two in c2pa-rs, whose own P-256 signing is slow); `Builder ms` is the ES256
signature through c2pa-python's `Builder.sign` (c2pa-rs reads and writes the image through Python
streams), the path every image took before, for comparison. All four are timed in turn in every
round.
`--breakdown` also times the parts of one signature (planning the manifest, the native Builder,
sizing the store, which only the first definition of a given length needs, c2pa-rs signing the
claim, hashing, inserting the container), c2pa-rs's floor (signing a claim that holds none of
imagegate's assertions) and the fixed cost on a 1x1 PNG, to show where the time goes.
This script must never be imported by tests and never asserts on timings.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import itertools
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

from bench.soak_upstream import generated_like
from provenance import (
    ManifestInfo,
    ManifestSigner,
    ProvenanceSettings,
    ensure_dev_credentials,
    load_signing_credentials,
)
from provenance.dev_credentials import DevAlgorithm

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def interleaved_medians(funcs: list[Callable[[], object]], runs: int) -> list[float]:
    """Median seconds of each function, timed in turn within every round.

    The hash baseline and the signatures thus share the same moments of a shared machine's load,
    so a busy second slows all of them, not only whichever was being timed.
    """
    for func in funcs:
        for _ in range(3):
            func()
    timings: list[list[float]] = [[] for _ in funcs]
    for _ in range(runs):
        for func, samples in zip(funcs, timings, strict=True):
            start = time.perf_counter()
            func()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in timings]


def median_seconds(func: Callable[[], object], runs: int) -> float:
    for _ in range(3):
        func()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def info(seed: int = 0) -> ManifestInfo:
    """What the proxy signs for one image; `seed` varies the scores and ids as traffic does.

    Scores are float32 classifier outputs (their JSON length varies), ids have fixed lengths.
    """
    rng = np.random.default_rng(seed)
    letters = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return ManifestInfo(
        model="gpt-image-1",
        provider="openai",
        verdicts=[
            {"stage": "prompt_filter", "action": "allow", "category": None,
             "score": float(np.float32(rng.random() * 0.1))},
            {"stage": "output_classifier", "action": "allow", "category": "nsfw",
             "score": float(np.float32(rng.random() * 0.3))},
        ],
        policy_version="sha256:" + "ab" * 32,
        licence={"model": "gpt-image-1", "decision": "allowed", "rule": "default"},
        audit_id="01J" + "".join(rng.choice(list(letters), 23)),
        request_id="req_" + rng.bytes(8).hex(),
    )


def dev_settings(keys_dir: Path, algorithm: DevAlgorithm) -> ProvenanceSettings:
    """Settings that sign with a fresh development certificate of `algorithm` under `keys_dir`."""
    dev = ensure_dev_credentials(keys_dir / algorithm, algorithm)
    return ProvenanceSettings(cert_chain_file=dev.cert_chain_file, private_key_file=dev.private_key_file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    results: dict[str, Any] = {"size": args.size, "runs": args.runs, "formats": {}}

    with tempfile.TemporaryDirectory() as keys_dir:
        settings = dev_settings(Path(keys_dir), "es256")
        credentials = load_signing_credentials(settings)
        signer = ManifestSigner(credentials, settings)
        builder_signer = ManifestSigner(credentials, settings, data_hashed=False)
        ed_settings = dev_settings(Path(keys_dir), "ed25519")
        ed_signer = ManifestSigner(load_signing_credentials(ed_settings), ed_settings)
    pixels = generated_like(args.size, args.size, seed=0)  # the soak's generated-like image
    manifest_info = info()
    # Every signature in the timed rounds gets its own scores and ids, as in traffic.
    varied = itertools.cycle([info(seed) for seed in range(1, 257)])
    path = "data-hashed" if signer.data_hashed_available else "Builder.sign (no data-hashed path)"
    results["path"] = path

    print(
        f"C2PA signing vs SHA-256 of the same bytes, {args.size}x{args.size}, "
        f"median of {args.runs} runs (ES256, no thumbnail, no TSA, no verify-after-sign; "
        f"sign: {path})"
    )
    header = (
        f"{'format':<6} {'bytes':>10} {'sha256 ms':>10} {'sign ms':>9} {'ratio':>7} "
        f"{'added B':>8} {'Ed25519 ms':>11} {'ratio':>7} {'added B':>8} {'Builder ms':>11} {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    native = signer._data_hashed
    for fmt, media_type in FORMATS.items():
        data = encode(pixels, fmt)
        sized_before = native.placeholders_sized if native else 0
        relearned_before = native.sizes_relearned if native else 0
        hash_s, sign_s, ed_s, builder_s = interleaved_medians(
            [
                lambda d=data: hashlib.sha256(d).digest(),
                lambda d=data, m=media_type: signer.sign(d, m, next(varied)),
                lambda d=data, m=media_type: ed_signer.sign(d, m, next(varied)),
                lambda d=data, m=media_type: builder_signer.sign(d, m, next(varied)),
            ],
            args.runs,
        )
        added = signer.sign(data, media_type, manifest_info).bytes_added
        ed_added = ed_signer.sign(data, media_type, manifest_info).bytes_added
        results["formats"][fmt] = {
            "bytes": len(data), "sha256_ms": hash_s * 1e3, "sign_ms": sign_s * 1e3,
            "ratio": sign_s / hash_s, "bytes_added": added,
            "ed25519_sign_ms": ed_s * 1e3, "ed25519_ratio": ed_s / hash_s, "ed25519_bytes_added": ed_added,
            "builder_sign_ms": builder_s * 1e3, "builder_ratio": builder_s / hash_s,
        }
        print(
            f"{fmt:<6} {len(data):>10,} {hash_s * 1e3:>10.3f} {sign_s * 1e3:>9.3f} "
            f"{sign_s / hash_s:>6.2f}x {added:>8,} {ed_s * 1e3:>11.3f} {ed_s / hash_s:>6.2f}x "
            f"{ed_added:>8,} {builder_s * 1e3:>11.3f} {builder_s / hash_s:>6.2f}x"
        )
        if native is not None:
            sized = native.placeholders_sized - sized_before
            relearned = native.sizes_relearned - relearned_before
            results["formats"][fmt].update(placeholders_sized=sized, sizes_relearned=relearned)
            print(
                f"         store size: {sized} of {args.runs + 3} signatures sized by c2pa-rs first,"
                f" {relearned} signed twice (learned size wrong), the rest learned"
            )
        if args.breakdown:
            breakdown(signer, data, media_type, manifest_info, args.runs, hash_s)
    if args.breakdown:
        fixed_cost(signer, builder_signer, ed_signer, manifest_info, args.runs)
    signer.close()
    builder_signer.close()
    ed_signer.close()
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
    """Where one data-hashed signature's time goes, piece by piece (same data, same run)."""
    import c2pa

    from provenance.containers import find_slot
    from provenance.manifest import plan_manifest
    from provenance.media import resolve_media_type
    from provenance.sign import _carries_c2pa, _slot_data_hash

    native = signer._data_hashed
    if native is None:
        print("         (no data-hashed path: nothing to break down)")
        return
    settings = ProvenanceSettings()
    plan = plan_manifest(manifest_info, settings, upstream=None)
    definition = json.dumps(plan.definition).encode()
    context, c2pa_signer = signer._context, signer._signer
    reserve = signer._reserve_sizes[id(c2pa_signer)]
    slot = find_slot(data, media_type)
    assert slot is not None
    store = native.sign(context, c2pa_signer, reserve, plan.definition, [], _slot_data_hash(slot, data))

    def new_builder() -> None:
        native._free(native._new_builder(context, definition))

    def builder_and_placeholder() -> None:
        builder = native._new_builder(context, definition)
        try:
            out = ctypes.c_void_p()
            size = native._placeholder(builder, reserve, b"application/c2pa", ctypes.byref(out))
            native._take(out, size, "placeholder")
        finally:
            native._free(builder)

    digest = slot.content_digest(data, len(store))
    precomputed = _slot_data_hash(slot, data)(len(store))

    def sign_claim() -> None:
        native.sign(context, c2pa_signer, reserve, plan.definition, [], lambda _size: precomputed)

    # What c2pa-rs costs whatever imagegate does: a claim with none of imagegate's assertions.
    empty = {"claim_generator_info": plan.definition["claim_generator_info"], "assertions": []}

    def sign_empty_claim() -> None:
        native.sign(context, c2pa_signer, reserve, empty, [], lambda _size: precomputed, exact_size=False)

    pieces = {
        "media type + upstream C2PA?": lambda: _carries_c2pa(data, resolve_media_type(data, media_type)),
        "plan manifest (Python)": lambda: plan_manifest(manifest_info, settings, upstream=None),
        "manifest JSON (Python)": lambda: json.dumps(plan.definition).encode(),
        "find slot (header walk)": lambda: find_slot(data, media_type),
        "native Builder": new_builder,
        "Builder + sizing (1st of a length)": builder_and_placeholder,
        "Builder + c2pa-rs signs (learned)": sign_claim,
        "c2pa-rs floor: empty claim": sign_empty_claim,
        "SHA-256, container excluded": lambda: slot.content_digest(data, len(store)),
        "insert container (one copy)": lambda: slot.embed(data, store),
        "(c2pa.Builder(), Python API)": lambda: c2pa.Builder(plan.definition, context=context).close(),
    }
    assert digest == bytes(precomputed["hash"])
    for name, func in pieces.items():
        seconds = median_seconds(func, runs)
        print(f"         {name:<36} {seconds * 1e3:8.3f} ms  ({seconds / hash_s:5.2f}x hash)")


def fixed_cost(
    signer: ManifestSigner,
    builder_signer: ManifestSigner,
    ed_signer: ManifestSigner,
    manifest_info: ManifestInfo,
    runs: int,
) -> None:
    """The per-image cost that does not depend on the image: signing a 1x1 PNG (69 bytes).

    Also with the same key behind a Python callback (ECDSA by OpenSSL instead of c2pa-rs's own
    P-256): the difference is the cost of the signature itself; c2pa-rs reserves about 10 KB
    for any callback signer, so its manifests are much larger.
    """
    from provenance.keys import SigningCredentials
    from provenance.signer import local_key_callback
    from provenance.sign import tiny_png

    local = signer.credentials
    assert local.private_key_pem is not None
    callback_credentials = SigningCredentials(
        cert_chain_pem=local.cert_chain_pem,
        algorithm=local.algorithm,
        certificates=local.certificates,
        signing_callback=local_key_callback(local.private_key_pem.get_secret_value(), local.algorithm),
    )
    callback_signer = ManifestSigner(callback_credentials, ProvenanceSettings())
    png = tiny_png()
    signers = (
        ("data-hashed, ES256 in c2pa-rs", signer),
        ("data-hashed, ES256 by OpenSSL callback", callback_signer),
        ("data-hashed, Ed25519 in c2pa-rs", ed_signer),
        ("Builder.sign, ES256 in c2pa-rs", builder_signer),
    )
    for name, manifest_signer in signers:
        seconds = median_seconds(lambda s=manifest_signer: s.sign(png, "image/png", manifest_info), runs)
        added = manifest_signer.sign(png, "image/png", manifest_info).bytes_added
        print(f"fixed cost, 1x1 PNG, {name:<40} {seconds * 1e3:7.3f} ms, {added:>6,} B added")
    callback_signer.close()


if __name__ == "__main__":
    sys.exit(main())
