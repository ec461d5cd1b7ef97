"""Test helpers: tiny real ONNX model packages built with onnx.helper (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nearline.registry.manifest import ONNX_FILE, InputFeature, Manifest, sha256_file

FEATURES = {
    # name: (standardizer, vocab, max_len, weighted)
    "title": ("title", 24, 1, False),
    "seniority": ("title", 8, 1, False),
    "skills": ("skills", 80, 8, True),
    "company": ("company", 64, 1, False),
    "geo": ("geo", 30, 1, False),
}


def tiny_tower_onnx(features: dict, dim: int, seed: int) -> onnx.ModelProto:
    """sum over features of (weighted) mean embedding, then a tanh projection: a real, deterministic graph."""
    rng = np.random.default_rng(seed)
    inputs, nodes, inits, parts = [], [], [], []
    for name, (_, vocab, max_len, weighted) in features.items():
        inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", max_len]))
        table = rng.normal(0, 1, size=(vocab, dim)).astype(np.float32)
        table[0] = 0.0  # padding row
        inits.append(numpy_helper.from_array(table, f"{name}_table"))
        nodes.append(helper.make_node("Gather", [f"{name}_table", name], [f"{name}_emb"], axis=0))
        if weighted:
            inputs.append(helper.make_tensor_value_info(f"{name}__weight", TensorProto.FLOAT, ["batch", max_len]))
            nodes.append(helper.make_node("Unsqueeze", [f"{name}__weight", "ax2"], [f"{name}_w3"]))
            nodes.append(helper.make_node("Mul", [f"{name}_emb", f"{name}_w3"], [f"{name}_we"]))
            src = f"{name}_we"
        else:
            src = f"{name}_emb"
        nodes.append(helper.make_node("ReduceSum", [src, "ax1"], [f"{name}_sum"], keepdims=0))
        parts.append(f"{name}_sum")
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1"))
    inits.append(numpy_helper.from_array(np.array([2], dtype=np.int64), "ax2"))
    nodes.append(helper.make_node("Sum", parts, ["total"]))
    w = rng.normal(0, 0.3, size=(dim, dim)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "proj"))
    nodes.append(helper.make_node("MatMul", ["total", "proj"], ["pre"]))
    nodes.append(helper.make_node("Tanh", ["pre"], ["embedding"]))
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
    graph = helper.make_graph(nodes, "tiny_tower", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_package(root: Path, name: str, version: str, entity_type: str, *, dim: int = 8, seed: int = 0,
                 features: dict | None = None) -> Path:
    features = features or FEATURES
    pkg = Path(root) / name / version
    pkg.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_tower_onnx(features, dim, seed), str(pkg / ONNX_FILE))
    man = Manifest(
        name=name, version=version, entity_type=entity_type,
        inputs=[InputFeature(name=f, standardizer=s, vocab_size=v, max_len=ml, weighted=w)
                for f, (s, v, ml, w) in features.items()],
        output_name="embedding", output_dim=dim, sha256=sha256_file(pkg / ONNX_FILE),
        provenance={"trained_by": "tests/helpers.py tiny_tower_onnx", "seed": seed},
    )
    (pkg / "manifest.json").write_text(json.dumps(man.to_json(), indent=2))
    return pkg
