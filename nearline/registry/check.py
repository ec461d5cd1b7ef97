"""Does a model package load and run? The manifest's shape checked against the ONNX graph, and a probe
feed (edge-of-vocabulary ids, defaults, empty lists) run through onnxruntime before a version is registered.
"""

from __future__ import annotations

import json
from pathlib import Path

from nearline.registry.manifest import MANIFEST, ONNX_FILE, Manifest, ModelPackage, sha256_file

REQUIRED_FIELDS = ("name", "version", "entity_type", "inputs", "output_name", "output_dim", "sha256")


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
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
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
        # FATAL only: an error is raised as a Python exception, which we report in one line; at ERROR
        # onnxruntime also prints its own raw (coloured) line to stderr first
        so.log_severity_level = 4
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

    from nearline.registry.features import FeatureEncoder

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
