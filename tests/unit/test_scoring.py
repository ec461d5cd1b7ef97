import json

import numpy as np
import onnxruntime as ort

from nearline import REPO_ROOT
from nearline.features import build_inputs
from nearline.registry import Manifest, Registry
from nearline.scoring import ModelSet, RegistryWatcher, run_rows
from tests.helpers import make_package


def test_an_embedding_does_not_depend_on_its_batch():
    """Bitwise dedupe relies on it: the same entity scored alone or with others gives the same bits."""
    pkg = REPO_ROOT / "models/packages/member_pyramid/v1"
    man = Manifest.from_json(json.loads((pkg / "manifest.json").read_text()))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(pkg / "tower.onnx"), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows = [{f.name: {"ids": rng.integers(0, 20, size=f.max_len).tolist(), "weights": None} for f in man.inputs}
            for _ in range(40)]
    batch = run_rows(sess, "embedding", build_inputs(man, rows))
    for i in (0, 17, 39):
        alone = run_rows(sess, "embedding", build_inputs(man, [rows[i]]))
        assert alone.tobytes() == batch[i:i + 1].tobytes()


def test_modelset_scores_every_model_of_the_type_and_isolates_bad_rows(tmp_path):
    reg = Registry(tmp_path / "registry.yaml")
    reg.register(make_package(tmp_path, "m_a", "v1", "member", seed=1))
    reg.register(make_package(tmp_path, "m_b", "v1", "member", seed=2, dim=4))
    reg.register(make_package(tmp_path, "j_a", "v1", "job", seed=3))
    ms = ModelSet(RegistryWatcher(reg, ["member", "job"]))
    good = {"title": {"ids": [1], "weights": None}}
    bad = {"skills": {"ids": [1, 2], "weights": [1.0]}}
    scores, errors = ms.score("member", [good, bad, good])
    assert set(scores) == {"m_a@v1", "m_b@v1"} and scores["m_b@v1"].shape == (3, 4)
    assert list(errors) == [1] and "1 weights for 2 ids" in errors[1]
    assert np.isnan(scores["m_a@v1"][1]).all() and np.array_equal(scores["m_a@v1"][0], scores["m_a@v1"][2])
