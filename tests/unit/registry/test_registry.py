import json

import numpy as np
import onnxruntime as ort
import pytest

from nearline.registry.check import check_package
from nearline.registry.features import FeatureShapeError, build_inputs
from nearline.registry.manifest import Manifest
from nearline.registry.packages import Registry, required_standardizers
from tests.helpers import make_package


def test_valid_package_and_registry_lines(tmp_path):
    reg = Registry(tmp_path / "registry.yaml")
    p1 = make_package(tmp_path / "packages", "member_tiny", "v1", "member")
    p2 = make_package(tmp_path / "packages", "job_tiny", "v1", "job", features={"title": ("title", 24, 1, False)})
    line = reg.register(p1)
    assert line == "- packages/member_tiny/v1"
    reg.register(p2)
    reg.register(p2)  # idempotent
    assert reg.path.read_text().count("\n") == 2  # one line per version
    good, bad = reg.load(["member", "job"])
    assert [g.manifest.key for g in good] == ["member_tiny@v1", "job_tiny@v1"] and not bad
    assert required_standardizers(good) == {"member": {"title", "skills", "company", "geo"}, "job": {"title"}}


def test_check_names_exactly_what_is_wrong(tmp_path):
    p = make_package(tmp_path, "m", "v1", "member")
    # wrong checksum
    man = json.loads((p / "manifest.json").read_text())
    (p / "manifest.json").write_text(json.dumps({**man, "sha256": "0" * 64}))
    _, problems = check_package(p)
    assert len(problems) == 1 and "SHA-256" in problems[0]
    # manifest declares a max_len the graph does not have, and an input the graph lacks
    man["inputs"][0]["max_len"] = 3
    man["inputs"].append({**man["inputs"][0], "name": "industry", "max_len": 1})
    (p / "manifest.json").write_text(json.dumps(man))
    _, problems = check_package(p)
    text = "\n".join(problems)
    assert "'title' has shape" in text and "'industry' declared in the manifest is missing" in text
    # a corrupted ONNX file whose checksum matches
    (p / "tower.onnx").write_bytes(b"garbage")
    from nearline.registry.manifest import sha256_file
    man = json.loads((p / "manifest.json").read_text())
    man["sha256"] = sha256_file(p / "tower.onnx")
    (p / "manifest.json").write_text(json.dumps(man))
    _, problems = check_package(p)
    assert "onnxruntime cannot load" in problems[0]
    (p / "tower.onnx").unlink()
    assert "tower.onnx missing" in check_package(p)[1][0]


def test_build_inputs_clips_pads_and_truncates(tmp_path):
    p = make_package(tmp_path, "m", "v1", "member")
    man = Manifest.from_json(json.loads((p / "manifest.json").read_text()))
    rows = [
        {"title": {"ids": [3], "weights": None}, "skills": {"ids": list(range(1, 12)), "weights": [0.5] * 11},
         "company": {"ids": [10_000], "weights": None}, "geo": {"ids": [0], "weights": None}},
        {"title": {"ids": [1], "weights": None}},  # the rest missing: declared defaults
    ]
    feed = build_inputs(man, rows)
    assert feed["title"].tolist() == [[5], [3]]            # taxonomy id t -> row t+2
    assert feed["company"].tolist() == [[1], [2]]          # beyond vocab -> OOV (1); default [0] -> row 2
    assert feed["skills"].shape == (2, 8) and feed["skills"][0].tolist() == list(range(3, 11))  # truncated
    assert feed["skills__weight"][0].tolist() == [0.5] * 8
    sess = ort.InferenceSession(str(p / "tower.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(["embedding"], feed)[0]
    assert out.shape == (2, 8) and np.isfinite(out).all()
    with pytest.raises(FeatureShapeError, match="3 weights for 2 ids"):
        build_inputs(man, [{"skills": {"ids": [1, 2], "weights": [1.0, 1.0, 1.0]}}])
    with pytest.raises(FeatureShapeError, match="non-negative integer"):
        build_inputs(man, [{"geo": {"ids": [-4], "weights": None}}])


# ---- issue 13: a model is run on probe inputs before it serves --------------------------------------

def _rewrite_manifest(p, **changes):
    man = json.loads((p / "manifest.json").read_text())
    for name, (field, value) in changes.items():
        next(f for f in man["inputs"] if f["name"] == name)[field] = value
    (p / "manifest.json").write_text(json.dumps(man))


def test_a_package_that_loads_but_fails_when_run_is_refused(tmp_path):
    p = make_package(tmp_path, "m", "v1", "member")
    assert check_package(p)[1] == []
    # the manifest promises a bigger vocabulary than the graph's embedding table (24 rows)
    _rewrite_manifest(p, title=("vocab_size", 500))
    pkg, problems = check_package(p)
    assert pkg is None and len(problems) == 1
    assert "fails when run on probe inputs" in problems[0] and "m@v1" in problems[0]
    # live registration refuses it too (same check): the registry serves only the good one
    reg = Registry(tmp_path / "registry.yaml")
    reg.register(p)
    reg.register(make_package(tmp_path, "ok", "v1", "member"))
    good, bad = reg.load(["member"])
    assert [g.manifest.key for g in good] == ["ok@v1"] and list(bad) == ["m/v1"]


def test_a_package_with_non_finite_weights_is_refused(tmp_path):
    import onnx
    from onnx import numpy_helper

    from nearline.registry.manifest import sha256_file

    p = make_package(tmp_path, "m", "v1", "member")
    model = onnx.load(str(p / "tower.onnx"))
    for init in model.graph.initializer:
        if init.name == "proj":
            arr = numpy_helper.to_array(init).copy()
            arr[0, 0] = np.nan
            init.CopyFrom(numpy_helper.from_array(arr, "proj"))
    onnx.save(model, str(p / "tower.onnx"))
    man = json.loads((p / "manifest.json").read_text())
    man["sha256"] = sha256_file(p / "tower.onnx")
    (p / "manifest.json").write_text(json.dumps(man))
    _, problems = check_package(p)
    assert len(problems) == 1 and "non-finite embedding" in problems[0]


def test_pad_and_oov_must_be_rows_of_the_table(tmp_path):
    p = make_package(tmp_path, "m", "v1", "member")
    _rewrite_manifest(p, geo=("oov_id", 30))
    assert "pad_id and oov_id must be rows" in "\n".join(check_package(p)[1])


def test_models_check_cli_refuses_a_package_that_fails_on_probe_inputs(tmp_path):
    import os
    import subprocess
    import sys

    p = make_package(tmp_path, "m", "v1", "member")
    _rewrite_manifest(p, skills=("vocab_size", 5000))
    reg = Registry(tmp_path / "registry.yaml")
    reg.register(p)
    (tmp_path / "nearline.yaml").write_text(f"models: {{registry: {reg.path}}}\n")
    out = subprocess.run([sys.executable, "-m", "nearline.cli", "--config", str(tmp_path / "nearline.yaml"), "models",
                          "check"], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.returncode != 0 and "FAIL m/v1" in out.stdout and "fails when run on probe inputs" in out.stdout
    assert "Traceback" not in out.stderr
