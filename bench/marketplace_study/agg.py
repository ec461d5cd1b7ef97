import json, collections
import numpy as np
runs = [json.loads(l) for l in open("/tmp/mkt/runs.jsonl")]
g = collections.OrderedDict()
for r in runs:
    g.setdefault((r["data"], r["label"]), []).append(r)
T = ("view", "apply", "inmail")
f = lambda v: f"{np.mean(v):.4f} ± {np.std(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
print("| data | variant | seeds | " + " | ".join(f"{t} test AUC (ceil / feat-ceil)" for t in T) + " | best epoch / run | s/epoch |")
print("|---|---|---|" + "---|" * 5)
for (d, l), rs in g.items():
    cells = []
    for t in T:
        a = [r["test"][t]["auc"] for r in rs]; c = [r["test"][t]["ceiling_auc"] for r in rs]; fc = [r["test"][t]["feature_ceiling_auc"] for r in rs]
        cells.append(f"{f(a)} ({np.mean(c):.3f} / {np.mean(fc):.3f}; gap {np.mean(c)-np.mean(a):+.3f})")
    print(f"| {d} | {l} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) +
          f" | {', '.join(str(r['best_epoch'])+'/'+str(r['epochs_run']) for r in rs)} | {np.mean([r['s_per_epoch'] for r in rs]):.0f} |")
