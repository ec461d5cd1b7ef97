"""Export the member and job towers as two separate ONNX model packages (tower.onnx + manifest.json)."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from nearline.models.tower import PositionalTower, PyramidTower
from nearline.registry.manifest import MANIFEST, ONNX_FILE, InputFeature, Manifest, sha256_file

OPSET = 17


def export_tower(tower: PyramidTower, path: Path) -> None:
    tower = tower.eval()
    wrapper = PositionalTower(tower).eval()
    names = tower.input_names()
    dummy = []
    for f in tower.cfg.features:
        dummy.append(torch.full((2, f.max_len), 2, dtype=torch.int64))
        if f.weighted:
            dummy.append(torch.ones((2, f.max_len), dtype=torch.float32))
    # The TorchScript-based exporter (dynamo=False) gives a plain opset-17 graph with a dynamic batch axis.
    torch.onnx.export(wrapper, tuple(dummy), str(path), input_names=names, output_names=["embedding"],
                      dynamic_axes={n: {0: "batch"} for n in names + ["embedding"]}, opset_version=OPSET,
                      dynamo=False, do_constant_folding=True)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def export_package(tower: PyramidTower, out_root: Path, name: str, version: str, entity_type: str,
                   provenance: dict, head: dict | None = None) -> Path:
    pkg = Path(out_root) / name / version
    pkg.mkdir(parents=True, exist_ok=True)
    export_tower(tower, pkg / ONNX_FILE)
    inputs = [InputFeature(name=f.name, standardizer=f.standardizer, vocab_size=f.vocab_size, max_len=f.max_len,
                           pad_id=f.pad_id, oov_id=f.oov_id, weighted=f.weighted, default_ids=list(f.default_ids),
                           kept_ids=list(f.kept_ids) if f.kept_ids is not None else None)
              for f in tower.cfg.features]
    man = Manifest(name=name, version=version, entity_type=entity_type, inputs=inputs, output_name="embedding",
                   output_dim=tower.cfg.dim, sha256=sha256_file(pkg / ONNX_FILE), opset=OPSET,
                   provenance={"exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "git_commit": _git_commit(), "torch": torch.__version__,
                               "python": platform.python_version(), **provenance},
                   head=head or {})
    (pkg / MANIFEST).write_text(json.dumps(man.to_json(), indent=2))
    return pkg


def parity(tower: PyramidTower, pkg: Path, feeds: dict[str, torch.Tensor]) -> float:
    """Max abs difference between PyTorch and onnxruntime on the same rows."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(pkg / ONNX_FILE), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = tower.eval()(feeds).numpy()
    got = sess.run(["embedding"], {k: v.numpy() for k, v in feeds.items()})[0]
    return float(np.abs(ref - got).max())
