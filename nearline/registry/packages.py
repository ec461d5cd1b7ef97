"""Model packages and the registry: the one contract training and serving share.

A model version is a folder with ``tower.onnx`` and ``manifest.json``. ``models/registry.yaml`` is a
YAML list with one line per registered version (the package folder, relative to the registry file);
adding a line registers a version. :func:`check_package` names exactly what is wrong with a package,
and runs it on probe inputs built from its manifest (:func:`probe_feed`) so that a package that loads
but fails when run (a manifest vocabulary larger than the graph's embedding table, NaN weights) is
refused by `nearline models check` and by live registration alike, before it ever serves.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nearline.registry.check import check_package
from nearline.registry.manifest import MANIFEST, ModelPackage, PackageError


class Registry:
    """models/registry.yaml: a YAML list, one registered package path per line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def entries(self) -> list[str]:
        if not self.path.exists():
            return []
        data = yaml.safe_load(self.path.read_text()) or []
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise PackageError(f"{self.path}: must be a YAML list of package paths, one per line")
        return data

    def resolve(self, entry: str) -> Path:
        p = Path(entry)
        return p if p.is_absolute() else self.path.parent / p

    def manifests(self) -> list[tuple[str, dict]]:
        """(entry, raw manifest JSON) of every registered line whose manifest reads, unchecked: for
        finding a version by its ``name@version`` key (retire), not for loading models (:meth:`load`)."""
        out = []
        for entry in self.entries():
            try:
                out.append((entry, json.loads((self.resolve(entry) / MANIFEST).read_text())))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def load(self, entity_types: list[str] | None = None) -> tuple[list[ModelPackage], dict[str, list[str]]]:
        """All valid registered packages, and the problems of the refused ones (by entry)."""
        good, bad = [], {}
        seen = set()
        for entry in self.entries():
            pkg, problems = check_package(self.resolve(entry), entity_types)
            if pkg and pkg.manifest.key in seen:
                problems = [f"{pkg.manifest.key} is registered twice"]
                pkg = None
            if pkg:
                seen.add(pkg.manifest.key)
                good.append(pkg)
            else:
                bad[entry] = problems
        return good, bad

    def register(self, package_dir: Path) -> str:
        """Append the one line that registers ``package_dir``; returns that line."""
        package_dir = Path(package_dir).resolve()
        try:
            entry = str(package_dir.relative_to(self.path.parent.resolve()))
        except ValueError:
            entry = str(package_dir)
        if entry in self.entries():
            return f"- {entry}"
        line = f"- {entry}"
        text = self.path.read_text() if self.path.exists() else ""
        if text and not text.endswith("\n"):
            text += "\n"
        self.path.write_text(text + line + "\n")
        return line


def required_standardizers(packages: list[ModelPackage]) -> dict[str, set[str]]:
    """entity type -> the processors its registered models need (the join waits for these)."""
    out: dict[str, set[str]] = {}
    for p in packages:
        out.setdefault(p.manifest.entity_type, set()).update(p.manifest.standardizers())
    return out
