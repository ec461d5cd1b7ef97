import json, sys
from pathlib import Path
import numpy as np
from nearline.marketplace.generate import Marketplace, MarketplaceSpec, TASK_LOGITS, read_table
from nearline.models.metrics import auc
d = Path(sys.argv[1])
spec = MarketplaceSpec(**json.loads((d / "summary.json").read_text())["spec"])
mp = Marketplace(spec)
np.savez(d / "bias.npz", m=mp.members["bias"], j=mp.jobs["bias"])
for task in ("view", "apply", "inmail"):
    df = read_table(d, task).to_pandas()
    mi = df.member_id.str[1:].astype(int).to_numpy(); ji = df.job_id.str[1:].astype(int).to_numpy()
    y = df.label.to_numpy(); tl = df.true_logit.to_numpy()
    feat = tl - TASK_LOGITS[task][0] * 0.5 * (mp.members["bias"][mi] + mp.jobs["bias"][ji])
    res = []
    for seed in (7, 8, 9):
        u = np.random.default_rng(seed).random(len(df)); te = (u >= 0.1) & (u < 0.3)
        res.append((auc(y[te], tl[te]), auc(y[te], feat[te])))
    res = np.array(res)
    print(d.name, task, len(df), int(y.sum()), "ceiling %.4f±%.4f  feature-ceiling %.4f±%.4f" % (res[:,0].mean(), res[:,0].std(), res[:,1].mean(), res[:,1].std()))
