"""usage: train.py DATA_DIR LABEL 'JSON overrides' SEEDS(comma) [max_rows]"""
import copy, json, sys, time
from pathlib import Path
import numpy as np, torch
from nearline.models.multitask import TrainConfig, Trainer, load_source, prepare_tasks, _merge
from nearline.models.metrics import auc
from nearline.marketplace.generate import Marketplace, MarketplaceSpec, TASK_LOGITS

torch.set_num_threads(1)
_ev = Trainer.evaluate
def _evp(self, split="val"):
    r = _ev(self, split)
    if split == "val":
        print("  val", " ".join(f"{t}={m['auc']:.4f}" for t, m in r.items()), time.strftime("%H:%M:%S"), file=sys.stderr, flush=True)
    return r
Trainer.evaluate = _evp
data, label, over, seeds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), [int(s) for s in sys.argv[4].split(",")]
d = Path(data)
base = TrainConfig.from_yaml(Path("/work/main/models/configs/marketplace.yaml"))
base.source_args = {"data_dir": str(d)}
base.split = {"kind": "random", "val_fraction": 0.1, "test_fraction": 0.2}
soft = over.pop("soft_train", False)
for k, v in over.items():
    if k == "architecture":
        base.architecture = _merge(base.architecture, v)
    elif k == "tasks":
        for t in base.tasks:
            for kk, vv in v.get(t.name, {}).items():
                setattr(t, kk, vv)
    else:
        setattr(base, k, v)
# bias terms for the feature ceiling
bf = d / "bias.npz"
if not bf.exists():
    spec = MarketplaceSpec(**json.loads((d / "summary.json").read_text())["spec"])
    mp = Marketplace(spec)
    np.savez(bf, m=mp.members["bias"], j=mp.jobs["bias"])
b = np.load(bf)
t0 = time.perf_counter()
tables, frames = load_source(base)
load_s = time.perf_counter() - t0
mb = np.array([b["m"][int(i[1:])] for i in tables["member"].ids])
jb = np.array([b["j"][int(i[1:])] for i in tables["job"].ids])
for seed in seeds:
    cfg = copy.deepcopy(base); cfg.seed = seed
    full = prepare_tasks(cfg, frames, tables)
    if soft:  # diagnostic: train on the true probability instead of the sampled 0/1 label
        for td in full:
            td.train["label"] = (1 / (1 + np.exp(-td.train.true_logit.to_numpy()))).astype(np.float32)
    t0 = time.perf_counter()
    tr = Trainer(cfg, tables, frames, progress=False)
    tr.tasks = full
    res = tr.fit()
    test = tr.evaluate("test")
    for td in full:
        r = td.test
        feat = r.true_logit.to_numpy() - TASK_LOGITS[td.name][0] * 0.5 * (mb[r.member_idx] + jb[r.job_idx])
        test[td.name]["feature_ceiling_auc"] = auc(r.label.to_numpy(), feat)
        test[td.name]["n_train"] = len(td.train)
        if td.name == "apply":  # diagnostic: the view head's score on the apply test rows
            with torch.no_grad():
                tr.model.eval()
                m = torch.from_numpy(r.member_idx.to_numpy().copy()); j = torch.from_numpy(r.job_idx.to_numpy().copy())
                lg = tr.model("view", tr.store.batch("member", m, td.present["member"]), tr.store.batch("job", j, td.present["job"])).numpy()
            test["apply"]["auc_via_view_head"] = auc(r.label.to_numpy(), lg)
    with torch.no_grad():
        tr.model.eval(); sv = {}
        for td in full:
            r = td.test
            m = torch.from_numpy(r.member_idx.to_numpy().copy()); j = torch.from_numpy(r.job_idx.to_numpy().copy())
            sv[td.name + "_logit"] = tr.model(td.name, tr.store.batch("member", m, td.present["member"]), tr.store.batch("job", j, td.present["job"])).numpy()
            sv[td.name + "_m"] = r.member_idx.to_numpy(); sv[td.name + "_j"] = r.job_idx.to_numpy(); sv[td.name + "_y"] = r.label.to_numpy(); sv[td.name + "_tl"] = r.true_logit.to_numpy()
        np.savez(f"/tmp/mkt/logits_{d.name}_{label}_{seed}.npz", **sv)
    out = {"label": label, "data": d.name, "seed": seed, "over": over, "best_epoch": res.best["epoch"],
           "epochs_run": len(res.history), "s_per_epoch": res.seconds_per_epoch, "wall_s": time.perf_counter() - t0,
           "load_s": load_s, "test": test,
           "val_hist": [{k: v for k, v in h.items() if k.endswith("/auc")} for h in res.history]}
    print(json.dumps(out, default=float), flush=True)
    with open("/tmp/mkt/runs.jsonl", "a") as fh:
        fh.write(json.dumps(out, default=float) + "\n")
    print(label, seed, " ".join(f"{t}: {m['auc']:.4f}/ceil {m['ceiling_auc']:.4f}/feat {m['feature_ceiling_auc']:.4f}" for t, m in test.items()),
          f"epoch {res.best['epoch']}/{len(res.history)} {res.seconds_per_epoch:.1f}s/ep", file=sys.stderr, flush=True)
