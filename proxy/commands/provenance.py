"""`imagegate provenance verify FILE_OR_DIR...`: check the Content Credentials of many images.

For ad-ops checking a whole campaign: folders are walked recursively (image extensions only;
files named explicitly are always checked), each image is verified with
`provenance.verify_image`, and the results are printed as text, JSON or CSV, with a summary at
the end. An image with a sidecar manifest store next to it (`photo.png.c2pa`, or `photo.c2pa` as
c2patool names it) is verified against that sidecar (`--ignore-sidecars` turns this off);
`--manifest FILE.c2pa` names the sidecar of a single image explicitly. A `.c2pa` file whose image
is not there is reported as an error: a manifest store alone proves nothing about any image. A progress bar is drawn on stderr only when stderr is a terminal. Exit status: 0 when
no image is invalid or unreadable, 1 otherwise (with `--require-credentials`, images without
credentials count as failures too), 2 for usage errors.

This command only reads files: it must never modify an image, and never fetch anything over the
network (verification is offline).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from provenance import ProvenanceError, VerificationReport, verify_image
from provenance.containers import SIDECAR_SUFFIX
from provenance.media import EXTENSIONS
from provenance.verify import media_type_for_path


CSV_COLUMNS = [
    "path",
    "state",
    "has_credentials",
    "signer_issuer",
    "signer_common_name",
    "signed_at",
    "digital_source_type",
    "generator",
    "software_agent",
    "imagegate_audit_id",
    "imagegate_policy_version",
    "ingredients",
    "failure_codes",
    "failures",
    "error",
    "sidecar",
]


@dataclass(frozen=True, slots=True)
class Target:
    """One image to verify, with the sidecar manifest store to check it against, if any."""

    path: Path
    sidecar: Path | None = None


@dataclass(frozen=True, slots=True)
class FileResult:
    path: Path
    report: VerificationReport | None
    error: str | None = None
    sidecar: Path | None = None

    @property
    def outcome(self) -> str:
        return self.report.state if self.report is not None else "error"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": str(self.path)}
        if self.report is not None:
            data.update(self.report.to_dict())
        else:
            data["state"] = self.outcome
        data["error"] = self.error
        data["sidecar"] = str(self.sidecar) if self.sidecar is not None else None
        return data


def register(subparsers: Any) -> None:
    group = subparsers.add_parser("provenance", help="C2PA Content Credentials tools")
    actions = group.add_subparsers(dest="provenance_command", metavar="ACTION", required=True)
    verify = actions.add_parser(
        "verify",
        help="verify the Content Credentials of image files or whole folders",
        description="Verify the C2PA Content Credentials of images (folders walked recursively).",
    )
    verify.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR")
    verify.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE.c2pa",
        help="verify the one image given against this sidecar manifest store",
    )
    verify.add_argument(
        "--ignore-sidecars",
        action="store_true",
        help="do not pick up IMAGE.c2pa sidecars next to images (check what images embed)",
    )
    verify.add_argument(
        "--trust-anchors",
        type=Path,
        metavar="PEM",
        help="PEM bundle of trusted root certificates (without it, at best 'valid')",
    )
    output = verify.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON document")
    output.add_argument("--csv", action="store_true", help="print CSV, one row per image")
    verify.add_argument(
        "--require-credentials",
        action="store_true",
        help="count images without credentials as failures (exit status 1)",
    )
    verify.add_argument(
        "--jobs", type=int, default=min(4, os.cpu_count() or 1), help="images verified at once"
    )
    verify.set_defaults(func=verify_command)


def verify_command(args: argparse.Namespace) -> int:
    anchors: str | None = None
    if args.trust_anchors is not None:
        try:
            anchors = args.trust_anchors.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read trust anchors {args.trust_anchors}: {exc}", file=sys.stderr)
            return 2
    if args.manifest is not None:
        if len(args.paths) != 1 or not args.paths[0].is_file():
            print("error: --manifest needs exactly one image file", file=sys.stderr)
            return 2
        if not args.manifest.is_file():
            print(f"error: no such sidecar: {args.manifest}", file=sys.stderr)
            return 2
        targets, missing = [Target(args.paths[0], args.manifest)], []
    else:
        targets, missing = collect_targets(args.paths, sidecars=not args.ignore_sidecars)
    for path in missing:
        print(f"error: no such file or folder: {path}", file=sys.stderr)
    progress = Progress(len(targets), sys.stderr) if sys.stderr.isatty() else None
    results: list[FileResult] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for result in pool.map(lambda target: verify_file(target, anchors), targets):
            results.append(result)
            if progress is not None:
                progress.advance()
    if progress is not None:
        progress.finish()
    if args.json:
        json.dump(
            {"results": [r.to_dict() for r in results], "summary": summarise(results)},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    elif args.csv:
        write_csv(results, sys.stdout)
    else:
        for result in results:
            write_text(result, sys.stdout)
    summary_stream = sys.stderr if (args.json or args.csv) else sys.stdout
    print(summary_line(results), file=summary_stream)
    counts = Counter(r.outcome for r in results)
    failed = (
        counts["invalid"] + counts["error"] + (counts["none"] if args.require_credentials else 0)
    )
    return 1 if failed or missing else 0


def collect_files(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Files to verify (folders walked recursively, sorted) and the paths that do not exist."""
    files: list[Path] = []
    missing: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(_walk(path))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def collect_targets(
    paths: Sequence[Path], *, sidecars: bool = True
) -> tuple[list[Target], list[Path]]:
    """Images to verify, each with the sidecar found next to it, and the paths that do not exist.

    A `.c2pa` file that is some image's sidecar is not a target of its own; one that is nobody's
    stays a target (and is reported as an orphan by `verify_file`).
    """
    files, missing = collect_files(paths)
    targets: list[Target] = []
    used: set[Path] = set()
    for path in files:
        if path.suffix.lower() == SIDECAR_SUFFIX:
            continue
        sidecar = find_sidecar(path) if sidecars else None
        if sidecar is not None:
            used.add(sidecar.resolve())
        targets.append(Target(path, sidecar))
    seen: set[Path] = set()
    for path in files:
        resolved = path.resolve()
        if path.suffix.lower() == SIDECAR_SUFFIX and resolved not in used and resolved not in seen:
            seen.add(resolved)
            targets.append(Target(path))
    return targets, missing


def find_sidecar(image: Path) -> Path | None:
    """`photo.png.c2pa` next to `photo.png`, else `photo.c2pa` (c2patool's name), else None."""
    for candidate in (image.with_name(image.name + SIDECAR_SUFFIX), image.with_suffix(SIDECAR_SUFFIX)):
        if candidate != image and candidate.is_file():
            return candidate
    return None


def _walk(folder: Path) -> Iterator[Path]:
    for root, directories, names in os.walk(folder):
        directories.sort()
        for name in sorted(names):
            if Path(name).suffix.lower() in EXTENSIONS and not name.startswith("."):
                yield Path(root) / name


def verify_file(target: Target | Path, anchors: str | None) -> FileResult:
    if isinstance(target, Path):
        target = Target(target)
    path, sidecar = target.path, target.sidecar
    if sidecar is None and path.suffix.lower() == SIDECAR_SUFFIX:
        return FileResult(
            path,
            None,
            "a sidecar manifest store without its image next to it: verify it with the image "
            f"(imagegate provenance verify IMAGE --manifest {path.name})",
        )
    try:
        data = path.read_bytes()
        store = sidecar.read_bytes() if sidecar is not None else None
    except OSError as exc:
        return FileResult(path, None, f"cannot read: {exc.strerror or exc}", sidecar)
    try:
        report = verify_image(data, media_type_for_path(path.name), anchors, manifest_store=store)
    except ProvenanceError as exc:
        return FileResult(path, None, str(exc), sidecar)
    return FileResult(path, report, sidecar=sidecar)


def summarise(results: Sequence[FileResult]) -> dict[str, int]:
    counts = Counter(r.outcome for r in results)
    return {
        "images": len(results),
        "trusted": counts["trusted"],
        "valid": counts["valid"],
        "invalid": counts["invalid"],
        "none": counts["none"],
        "errors": counts["error"],
    }


def summary_line(results: Sequence[FileResult]) -> str:
    s = summarise(results)
    return (
        f"{s['images']} images: {s['trusted']} trusted, {s['valid']} valid (signer not trusted), "
        f"{s['invalid']} invalid, {s['none']} without credentials, {s['errors']} unreadable"
    )


def write_text(result: FileResult, stream: TextIO) -> None:
    report = result.report
    if report is None:
        sidecar = f" (sidecar {result.sidecar.name})" if result.sidecar is not None else ""
        stream.write(f"ERROR    {result.path}{sidecar}: {result.error}\n")
        return
    parts = []
    if report.signer is not None:
        parts.append(f"signed by {report.signer.common_name} ({report.signer.issuer})")
    if report.digital_source_type:
        parts.append(report.digital_source_type.rsplit("/", 1)[-1])
    if report.software_agent:
        parts.append(f"agent {report.software_agent}")
    if report.imagegate is not None:
        parts.append(f"imagegate audit {report.imagegate.get('audit_id')}")
    if report.ingredients:
        parts.append(f"{len(report.ingredients)} ingredient(s)")
    if result.sidecar is not None:
        parts.append(f"sidecar {result.sidecar.name}")
    detail = f"  [{'; '.join(parts)}]" if parts else ""
    stream.write(f"{report.state.upper():<8} {result.path}{detail}\n")
    for failure in report.failures:
        where = " (ingredient)" if failure.ingredient else ""
        stream.write(f"         - {failure.message}{where} [{failure.code}]\n")
    stream.writelines(f"         note: {note}\n" for note in report.notes)


def write_csv(results: Sequence[FileResult], stream: TextIO) -> None:
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for result in results:
        report = result.report
        row: dict[str, Any] = {
            "path": str(result.path),
            "state": result.outcome,
            "error": result.error,
            "sidecar": str(result.sidecar) if result.sidecar is not None else None,
        }
        if report is not None:
            imagegate = report.imagegate or {}
            row.update(
                has_credentials=report.has_credentials,
                signer_issuer=report.signer.issuer if report.signer else None,
                signer_common_name=report.signer.common_name if report.signer else None,
                signed_at=report.signer.signed_at if report.signer else None,
                digital_source_type=report.digital_source_type,
                generator=report.generator,
                software_agent=report.software_agent,
                imagegate_audit_id=imagegate.get("audit_id"),
                imagegate_policy_version=imagegate.get("policy_version"),
                ingredients="; ".join(
                    f"{i.title} ({i.relationship}{', with manifest' if i.has_manifest else ''})"
                    for i in report.ingredients
                ),
                failure_codes=";".join(f.code for f in report.failures),
                failures=" | ".join(f.message for f in report.failures),
            )
        writer.writerow(row)


class Progress:
    """A one-line progress bar on a terminal (stderr), redrawn at most 10 times a second."""

    def __init__(self, total: int, stream: TextIO, width: int = 30) -> None:
        self._total = max(total, 1)
        self._done = 0
        self._stream = stream
        self._width = width
        self._last_draw = 0.0

    def advance(self) -> None:
        self._done += 1
        now = time.monotonic()
        if now - self._last_draw >= 0.1 or self._done == self._total:
            self._last_draw = now
            filled = self._width * self._done // self._total
            bar = "#" * filled + "-" * (self._width - filled)
            self._stream.write(f"\r[{bar}] {self._done}/{self._total}")
            self._stream.flush()

    def finish(self) -> None:
        self._stream.write("\r" + " " * (self._width + 24) + "\r")
        self._stream.flush()
