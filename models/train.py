"""`nearline train --config FILE`: train, evaluate, plot, export both towers, print the registry lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from nearline.models.export import export_package, parity
from nearline.models.multitask import TrainConfig, Trainer, load_source
from nearline.models.plots import plot_history
from nearline.registry.packages import Registry


def run_training(config_path: Path, out_dir: Path | None = None, version: str | None = None,
                 register: Registry | None = None, progress: bool = True, packages_root: Path | None = None) -> dict:
    cfg = TrainConfig.from_yaml(config_path)
    version = version or time.strftime("v%Y%m%d%H%M%S", time.gmtime())
    out_dir = Path(out_dir or Path("runs") / f"{Path(config_path).stem}-{version}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    tables, frames = load_source(cfg)
    trainer = Trainer(cfg, tables, frames, out_dir, progress=progress)
    if progress:
        for name, info in trainer.model.sharing_report().items():
            print(f"module {name:16s} {'SHARED by ' + ','.join(info['tasks']) if info['shared'] else 'task-specific (' + info['tasks'][0] + ')'}")
    for feat, rep in trainer.vocab_report.items():
        print(f"vocabulary of {feat}: kept {rep['n']} of {rep['distinct_values']} values per side, covering "
              f"{rep['covered']:.1%} of interactions; " + ", ".join(f"n={c['n']}: {c['densest']:.1%}" for c in rep["curve"]))
    oov = trainer.store.oov_lines(cfg.entity_types)
    if progress:
        for line in oov:
            print(line)
    res = trainer.fit()
    # held-out test rows (if the split has them): the numbers to report, at the epoch early stopping chose
    test_metrics = trainer.evaluate("test") if any(len(td.test) for td in trainer.tasks) else {}
    plots = plot_history(res.history, [t.name for t in cfg.tasks], out_dir)

    # export: the towers of the first task (shared towers are the same module for every task)
    first = cfg.tasks[0].name
    heads = {}
    for t in cfg.tasks:
        h = res.model.modules_by_name[res.model.task_modules[t.name]["head"]].lin
        heads[t.name] = {"w": h.weight.detach().squeeze(0).tolist(), "b": float(h.bias.detach())}
    provenance = {"config": str(config_path), "source": cfg.source, "seed": cfg.seed, "mode": cfg.mode,
                  "weighting": cfg.weighting, "split": cfg.split, "best_epoch": res.best["epoch"],
                  "val_metrics": res.best["metrics"], "test_metrics": test_metrics, "tasks": [t.name for t in cfg.tasks]}
    root = Path(packages_root) if packages_root else out_dir / "packages"
    lines, pkgs, max_diff = [], {}, {}
    for side in ("member", "job"):
        tower = res.model.tower(side, first)
        pkg = export_package(tower, root, cfg.model_names[side], version, cfg.entity_types[side], provenance, heads)
        # parity on real rows of the validation split
        td = res.tasks[0]
        idx = torch.from_numpy(td.val[f"{side}_idx"].to_numpy()[:256])
        feeds = res.store.batch(side, idx, td.present[side])
        feeds = {k: v.contiguous() for k, v in feeds.items()}
        max_diff[side] = parity(tower, pkg, feeds)
        pkgs[side] = pkg
        if register is not None:
            lines.append(register.register(pkg))
        else:
            reg_dir = Path("models")
            try:
                lines.append(f"- {pkg.resolve().relative_to(reg_dir.resolve())}")
            except ValueError:
                lines.append(f"- {pkg.resolve()}")
    summary = {"version": version, "out_dir": str(out_dir), "packages": {k: str(v) for k, v in pkgs.items()},
               "registry_lines": lines, "registered": register is not None, "best": res.best, "test_metrics": test_metrics,
               "sharing": res.sharing, "seconds_per_epoch": res.seconds_per_epoch,
               "parameters": sum(p.numel() for p in res.model.parameters()),
               "onnx_bytes": {k: (v / "tower.onnx").stat().st_size for k, v in pkgs.items()},
               "parity_max_abs_diff": max_diff, "plots": [str(p) for p in plots],
               "total_seconds": time.perf_counter() - t0, "history": res.history, "vocab_subsets": res.vocab_report,
               "out_of_vocabulary": trainer.store.oov}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
