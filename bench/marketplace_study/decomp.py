"""Regress a run's test logits on the generator's latent affinity components."""
import json, sys
from pathlib import Path
import numpy as np
from nearline.marketplace.generate import Marketplace, MarketplaceSpec, TASK_LOGITS
from nearline.models.metrics import auc
d = Path(sys.argv[1]); f = np.load(sys.argv[2])
spec = MarketplaceSpec(**json.loads((d / "summary.json").read_text())["spec"])
mp = Marketplace(spec); M, J = mp.members, mp.jobs
# tables index order == entity order m0.. (table_from_rows keeps file order)
for task in ("view", "apply", "inmail"):
    mi, ji, lg, y, tl = f[task + "_m"], f[task + "_j"], f[task + "_logit"], f[task + "_y"], f[task + "_tl"]
    comps = {"occ": mp.occ_sim[M["occ"][mi], J["occ"][ji]],
             "skill": (M["skills"][mi] & J["skills"][ji]).sum(1) / np.maximum((M["skills"][mi] | J["skills"][ji]).sum(1), 1),
             "geo": (M["geo"][mi] == J["geo"][ji]).astype(float), "sen_gap": np.abs(M["sen"][mi] - J["sen"][ji]).astype(float),
             "ind": (mp.comp_industry[M["company"][mi]] == mp.comp_industry[J["company"][ji]]).astype(float),
             "bias_m": M["bias"][mi], "bias_j": J["bias"][ji]}
    if task == "inmail":
        comps["step"] = (J["sen"][ji] - M["sen"][mi] == 1).astype(float)
    truth = {"occ": 2.5, "skill": 2.0, "geo": 0.9, "sen_gap": -0.5, "ind": 0.3, "bias_m": 0.5, "bias_j": 0.5, "step": 0.8 / TASK_LOGITS[task][0]}
    X = np.column_stack([np.ones(len(mi))] + list(comps.values()))
    for name, target in (("model", lg), ("true", tl)):
        coef, *_ = np.linalg.lstsq(X, target, rcond=None)
        pred = X @ coef; r2 = 1 - ((target - pred) ** 2).sum() / ((target - target.mean()) ** 2).sum()
        # express each coefficient relative to the occupation coefficient (scale-free), truth alongside
        rel = {k: coef[i + 1] / coef[1] for i, k in enumerate(comps)}
        print(f"{task:6s} {name:5s} R2={r2:.3f} " + " ".join(f"{k}={rel[k]:+.2f}(true {truth[k]/2.5:+.2f})" for k in comps))
    # AUC of the truth with one component's contribution removed: how much each term matters
    s = TASK_LOGITS[task][0]
    print("   AUC model", round(auc(y, lg), 4), "truth", round(auc(y, tl), 4), " truth minus term:",
          " ".join(f"{k}:{auc(y, tl - s * truth[k] * comps[k] if k != 'step' else tl - 0.8 * comps[k]):.4f}" for k in comps))
