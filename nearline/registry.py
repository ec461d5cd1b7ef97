"""Model packages and the registry: the one contract training and serving share.

A model version is a folder with ``tower.onnx`` and ``manifest.json``. ``models/registry.yaml`` is a
YAML list with one line per registered version (the package folder, relative to the registry file);
adding a line registers a version. :func:`check_package` names exactly what is wrong with a package,
and runs it on probe inputs built from its manifest (:func:`probe_feed`) so that a package that loads
but fails when run (a manifest vocabulary larger than the graph's embedding table, NaN weights) is
refused by `nearline models check` and by live registration alike, before it ever serves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


_REQUIRED = ("name", "version", "entity_type", "inputs", "output_name", "output_dim", "sha256")


def check_package(path: Path, entity_types: list[str] | None = None) -> tuple[ModelPackage | None, list[str]]:
    """Validate one package folder. Returns (package or None, problems); no problems means servable."""
    path = Path(path)
    problems: list[str] = []
    if not path.is_dir():
        return None, [f"{path}: package folder does not exist"]
    mpath, opath = path / MANIFEST, path / ONNX_FILE
    if not mpath.exists():
        problems.append(f"{mpath}: manifest.json missing")
    if not opath.exists():
        problems.append(f"{opath}: tower.onnx missing")
    if problems:
        return None, problems
    try:
        raw = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        return None, [f"{mpath}: not valid JSON ({exc})"]
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        return None, [f"{mpath}: missing field(s) {missing}"]
    try:
        man = Manifest.from_json(raw)
    except TypeError as exc:
        return None, [f"{mpath}: bad field(s): {exc}"]
    if entity_types is not None and man.entity_type not in entity_types:
        problems.append(f"{man.key}: entity_type {man.entity_type!r} is not one of {entity_types}")
    for f in man.inputs:
        if f.vocab_size < 3 or f.max_len < 1 or f.pad_id == f.oov_id:
            problems.append(f"{man.key}: input {f.name}: vocab_size>=3, max_len>=1 and pad_id!=oov_id required")
        elif not (0 <= f.pad_id < f.vocab_size and 0 <= f.oov_id < f.vocab_size):
            problems.append(f"{man.key}: input {f.name}: pad_id and oov_id must be rows of the table [0, {f.vocab_size})")
    digest = sha256_file(opath)
    if digest != man.sha256:
        problems.append(f"{man.key}: tower.onnx SHA-256 is {digest[:16]}..., manifest says {man.sha256[:16]}...")
        return None, problems  # do not even try to load a file that is not the one trained
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(opath), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        problems.append(f"{man.key}: onnxruntime cannot load tower.onnx: {str(exc).splitlines()[0][:300]}")
        return None, problems
    got = {i.name: i for i in sess.get_inputs()}
    want: dict[str, tuple[str, int]] = {}
    for f in man.inputs:
        want[f.onnx_input] = ("tensor(int64)", f.max_len)
        if f.weighted:
            want[f.weight_input] = ("tensor(float)", f.max_len)
    for name, (dtype, width) in want.items():
        if name not in got:
            problems.append(f"{man.key}: ONNX input {name!r} declared in the manifest is missing from the graph")
            continue
        gi = got[name]
        if gi.type != dtype:
            problems.append(f"{man.key}: ONNX input {name!r} has dtype {gi.type}, manifest implies {dtype}")
        if len(gi.shape) != 2 or gi.shape[1] != width or isinstance(gi.shape[0], int) and gi.shape[0] != -1:
            problems.append(f"{man.key}: ONNX input {name!r} has shape {gi.shape}, manifest implies [batch, {width}]")
    for extra in sorted(set(got) - set(want)):
        problems.append(f"{man.key}: ONNX input {extra!r} is not declared in the manifest")
    outs = {o.name: o for o in sess.get_outputs()}
    if man.output_name not in outs:
        problems.append(f"{man.key}: ONNX output {man.output_name!r} missing (graph has {sorted(outs)})")
    else:
        o = outs[man.output_name]
        if o.type != "tensor(float)":
            problems.append(f"{man.key}: ONNX output dtype {o.type}, manifest implies tensor(float)")
        if len(o.shape) != 2 or o.shape[1] != man.output_dim:
            problems.append(f"{man.key}: ONNX output shape {o.shape}, manifest says [batch, {man.output_dim}]")
    if not problems:
        problems += probe_package(man, sess)
    return (None if problems else ModelPackage(path, man)), problems


PROBE_ROWS = ("every id at the largest row (vocab_size-1), max_len long", "the declared defaults", "all oov_id",
              "all pad_id")


def probe_feed(man: Manifest) -> dict:
    """ONNX inputs that exercise the extremes the manifest allows, one row each (see PROBE_ROWS): every
    feature at its largest row id and full length, the defaults a partial join uses, all OOV, all pad."""
    import numpy as np

    from nearline.features import FeatureEncoder

    feed = {}
    for f in man.inputs:
        ids = np.full((len(PROBE_ROWS), f.max_len), f.pad_id, dtype=np.int64)
        ids[0, :] = f.vocab_size - 1
        defaults = FeatureEncoder(f).rows(f.default_ids)
        ids[1, : len(defaults)] = defaults
        ids[2, :] = f.oov_id
        feed[f.onnx_input] = ids
        if f.weighted:
            w = np.ones((len(PROBE_ROWS), f.max_len), dtype=np.float32)
            w[3, :] = 0.0
            feed[f.weight_input] = w
    return feed


def probe_package(man: Manifest, sess) -> list[str]:
    """Run the package on :func:`probe_feed`; the problems (none if it runs and every output is finite)."""
    import numpy as np

    try:
        feed = probe_feed(man)
    except Exception as exc:  # e.g. default ids that are not integers
        return [f"{man.key}: cannot build probe inputs from the manifest: {exc}"]
    try:
        out = sess.run([man.output_name], feed)[0]
    except Exception as exc:  # onnxruntime raises its own types (e.g. Gather index out of bounds)
        msg = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        return [f"{man.key}: fails when run on probe inputs built from its manifest (max ids, max_len, defaults; "
                f"e.g. a vocab_size larger than the graph's embedding table): {msg}"]
    if out.shape != (len(PROBE_ROWS), man.output_dim):
        return [f"{man.key}: probe output has shape {list(out.shape)}, expected [{len(PROBE_ROWS)}, {man.output_dim}]"]
    bad = [PROBE_ROWS[i] for i in range(len(PROBE_ROWS)) if not np.isfinite(out[i]).all()]
    if bad:
        return [f"{man.key}: non-finite embedding (NaN/inf) on probe inputs: {'; '.join(bad)}"]
    return []


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
