"""`nearline train --config FILE --register`: metrics per task, plots, checkpoint, two registered towers."""

import json
import subprocess
import sys

import yaml


def test_train_cli_registers_both_towers(marketplace_dir, tmp_path):
    cfg = {
        "source": "marketplace", "source_args": {"data_dir": str(marketplace_dir)}, "seed": 3, "epochs": 2,
        "architecture": {"member_tower": {"name": "member_tower", "emb_dim": 8, "widths": [16, 32], "dim": 8},
                         "job_tower": {"name": "job_tower", "emb_dim": 8, "widths": [16, 32], "dim": 8},
                         "head": {"dim": 8}},
        "tasks": {"view": {"dataset": "view", "batch_size": 256}, "apply": {"dataset": "apply", "batch_size": 128}},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp_path / "nearline.yaml").write_text(yaml.safe_dump({"models": {"registry": str(tmp_path / "registry.yaml")}}))
    run = [sys.executable, "-m", "nearline.cli", "--config", str(tmp_path / "nearline.yaml")]
    out = subprocess.run(run + ["train", "--config", str(tmp_path / "train.yaml"), "--version", "v7",
                                "--out", str(tmp_path / "run"), "--register"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "epoch 1:" in out.stdout and "view auc=" in out.stdout and "apply auc=" in out.stdout
    assert "module member_tower" in out.stdout and "SHARED by view,apply" in out.stdout
    lines = (tmp_path / "registry.yaml").read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("- ") and line.endswith("/v7") for line in lines)
    for line in lines:
        assert line in out.stdout  # the printed lines are the ones registered
    assert (tmp_path / "run" / "curves_view.png").stat().st_size > 1000
    assert (tmp_path / "run" / "curves_apply.png").exists() and (tmp_path / "run" / "checkpoint.pt").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert max(summary["parity_max_abs_diff"].values()) < 1e-5
    check = subprocess.run(run + ["models", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "2 ok, 0 broken" in check.stdout
