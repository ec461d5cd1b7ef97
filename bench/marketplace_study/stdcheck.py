import numpy as np
from pathlib import Path
from nearline.models.data import marketplace_source
from nearline.marketplace.generate import read_table
d = Path("/tmp/mkt/data_10k_5k_20_10")
tables, frames = marketplace_source(d)
for side in ("member", "job"):
    raw = read_table(d, side + "s").to_pandas()
    t = tables[side]
    f = t.features
    print(side, "title==occ", np.mean(f["title"][:, 0] == raw.occupation.to_numpy()), "title ids sample", f["title"][:5, 0], raw.occupation.to_numpy()[:5])
    print(side, "sen==sen", np.mean(f["seniority"][:, 0] == raw.seniority.to_numpy()), f["seniority"][:5, 0], raw.seniority.to_numpy()[:5])
    print(side, "geo==geo", np.mean(f["geo"][:, 0] == raw.geo_id.to_numpy()), "company==", np.mean(f["company"][:, 0] == raw.company_id.to_numpy()))
    sk = [set(r) for r in raw.skill_ids]; got = [set(x for x in row if x >= 0) for row in f["skills"]]
    print(side, "skills exact", np.mean([a == b for a, b in zip(sk, got)]), "recall", np.mean([len(a & b) / max(len(a), 1) for a, b in zip(sk, got)]))
