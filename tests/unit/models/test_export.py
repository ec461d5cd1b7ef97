import json

import numpy as np
import torch

from nearline.models.export import export_package, parity
from nearline.models.multitask import Trainer
from nearline.registry.check import check_package
from nearline.registry.features import build_inputs
from nearline.registry.manifest import Manifest
from tests.unit.models.conftest import tiny_config


def test_export_two_towers_parity_and_registry_contract(market_data, tmp_path):
    tables, frames = market_data
    res = Trainer(tiny_config(epochs=1), tables, frames, progress=False).fit()
    td = res.tasks[0]
    for side in ("member", "job"):
        tower = res.model.tower(side)
        pkg = export_package(tower, tmp_path, f"{side}_t", "v9", side, {"test": True})
        got, problems = check_package(pkg, ["member", "job"])
        assert not problems, problems
        man = got.manifest
        assert man.opset >= 17 and man.entity_type == side and man.output_dim == 8
        assert {f.name for f in man.inputs} == set(res.schema[side])
        # parity on real rows: PyTorch vs onnxruntime
        idx = torch.from_numpy(td.val[f"{side}_idx"].to_numpy()[:300])
        feeds = {k: v.contiguous() for k, v in res.store.batch(side, idx, td.present[side]).items()}
        assert parity(tower, pkg, feeds) < 1e-5
        # dynamic batch axis: any batch size runs
        import onnxruntime as ort

        sess = ort.InferenceSession(str(pkg / "tower.onnx"), providers=["CPUExecutionProvider"])
        for n in (1, 7):
            out = sess.run(["embedding"], {k: v[:n].numpy() for k, v in feeds.items()})[0]
            assert out.shape == (n, 8)


def test_serving_tensors_equal_training_tensors(market_data, tmp_path):
    """nearline.features (serving) must build exactly the rows FeatureStore (training) feeds the tower."""
    tables, frames = market_data
    res = Trainer(tiny_config(epochs=1), tables, frames, progress=False).fit()
    pkg = export_package(res.model.tower("member"), tmp_path, "m", "v1", "member", {})
    man = Manifest.from_json(json.loads((pkg / "manifest.json").read_text()))
    t = tables["member"]
    rows = []
    for i in range(50):
        row = {}
        for name in man.inputs:
            ids = [int(x) for x in t.features[name.name][i] if x >= 0]
            row[name.name] = {"ids": ids, "weights": [float(w) for w in t.weights[name.name][i][: len(ids)]]}
        rows.append(row)
    feed = build_inputs(man, rows)
    train = res.store.batch("member", torch.arange(50), set(res.schema["member"]))
    for k, v in feed.items():
        np.testing.assert_array_equal(v, train[k].numpy(), err_msg=k)
