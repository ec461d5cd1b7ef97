"""The model package contract: a folder with ``tower.onnx`` and ``manifest.json``, the one thing training and
serving share. What a manifest holds (Manifest, InputFeature), a loaded package (ModelPackage) and its checksum.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
ONNX_FILE = "tower.onnx"


class PackageError(ValueError):
    """A model package is broken; the message lists every problem."""


@dataclass
class InputFeature:
    name: str
    """Feature name as standardizers emit it (title, seniority, skills, company, geo)."""
    standardizer: str
    """Processor that produces the feature; the join waits for it."""
    vocab_size: int
    """Rows of the embedding table, including pad (id pad_id) and out-of-vocabulary (oov_id)."""
    max_len: int
    """Ids per row; multi-valued features are truncated to the first max_len and padded."""
    pad_id: int = 0
    oov_id: int = 1
    weighted: bool = False
    """If true the ONNX graph takes a second input '<name>__weight' (float32, same shape)."""
    default_ids: list[int] = field(default_factory=lambda: [0])
    """Taxonomy ids used when the feature is missing (partial join); [0] is 'unknown'."""
    kept_ids: list[int] | None = None
    """If set, only these taxonomy ids have their own row (high-cardinality subsetting): the i-th
    kept id maps to row i+2, everything else to oov_id. If None, taxonomy id t maps to row t+2."""

    @property
    def onnx_input(self) -> str:
        return self.name

    @property
    def weight_input(self) -> str:
        return f"{self.name}__weight"


@dataclass
class Manifest:
    name: str
    version: str
    entity_type: str
    inputs: list[InputFeature]
    output_name: str
    output_dim: int
    sha256: str
    opset: int = 17
    provenance: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    """Optional scoring heads (task -> {w: [...], b: float}) for consumers scoring member-job pairs."""

    @property
    def key(self) -> str:
        """Redis hash field and display name: '<name>@<version>'."""
        return f"{self.name}@{self.version}"

    def standardizers(self) -> set[str]:
        return {f.standardizer for f in self.inputs}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Manifest":
        d = dict(d)
        d["inputs"] = [InputFeature(**f) for f in d["inputs"]]
        return cls(**d)


@dataclass
class ModelPackage:
    path: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
