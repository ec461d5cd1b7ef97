"""The negative-transfer study's plumbing: variants become configs, and the table compares every multitask
variant with the best single-task variant of each task (mean over its seeds)."""

import json

import pytest

pytest.importorskip("torch")

from nearline.models import negative_transfer as nt  # noqa: E402
from nearline.models.multitask import TrainConfig  # noqa: E402


def test_variants_become_configs():
    base = TrainConfig.from_yaml(nt.CONFIG)
    single = nt.configure(base, nt.VARIANTS["single: rated"][1])
    assert [t.name for t in single.tasks] == ["rated"] and single.epochs == 25 and single.patience == 3
    tied = nt.configure(base, nt.VARIANTS["iterative, shared embeddings only"][1])
    assert tied.mode == "iterative" and tied.share_embeddings
    assert next(t for t in tied.tasks if t.name == "liked").architecture["member_tower"]["name"] == "liked_user_tower"
    assert base.mode == "joint" and not base.share_embeddings  # the base config is not modified
    weighted = nt.configure(base, nt.VARIANTS["iterative, liked weight 0.5"][1])
    assert next(t for t in weighted.tasks if t.name == "liked").loss_weight == 0.5


def test_render_compares_with_the_best_single_task_variant(tmp_path):
    rows = [{"variant": "single: rated", "seed": s, "test_auc": {"rated": a}, "best_epoch": 10}
            for s, a in ((7, 0.80), (8, 0.82))]
    rows += [{"variant": "single: rated, wider towers", "seed": 7, "test_auc": {"rated": 0.83}, "best_epoch": 9},
             {"variant": "single: liked", "seed": 7, "test_auc": {"liked": 0.70}, "best_epoch": 5},
             {"variant": "iterative", "seed": 7, "test_auc": {"rated": 0.84, "liked": 0.71}, "best_epoch": 12}]
    log = tmp_path / "runs.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = nt.render(log, tmp_path / "out.md", tmp_path / "plots" / "nt.png")
    line = next(x for x in md.splitlines() if x.startswith("| iterative |"))
    assert "| 0.8400 (one seed) | +0.0100 | 0.7100 (one seed) | +0.0100 |" in line  # vs 0.83 (wider), not 0.81
    assert "| 0.8100 ± 0.0100 |" in next(x for x in md.splitlines() if x.startswith("| single: rated |"))
    assert (tmp_path / "plots" / "nt.png").stat().st_size > 1000
