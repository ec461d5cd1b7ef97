import json, time, shutil
from pathlib import Path
from nearline.marketplace.generate import MarketplaceSpec, generate
from nearline.models.data import marketplace_source
sizes = [(2000, 1000, 20, 4), (10000, 5000, 20, 10), (20000, 10000, 30, 10), (50000, 25000, 20, 10), (50000, 25000, 50, 10)]
out = []
for m, j, imp, inm in sizes:
    d = Path(f"/tmp/mkt/data_{m//1000}k_{j//1000}k_{imp}_{inm}")
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    s = generate(MarketplaceSpec(members=m, jobs=j, impressions_per_member=imp, inmails_per_job=inm), d, progress=False)
    gen = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in d.iterdir())
    t0 = time.perf_counter()
    tables, frames = marketplace_source(d)
    load = time.perf_counter() - t0
    r = dict(members=m, jobs=j, imp=imp, inmails_per_job=inm, gen_s=gen, load_s=load, disk_bytes=disk,
             views=s["views"], view_rate=s["view_rate"], apply_rows=s["apply_rows"], apply_rate_of_views=s["apply_rate_of_views"],
             applies=int(frames["apply"].label.sum()), inmails=s["inmails"], inmail_rate=s["inmail_accept_rate"],
             files={p.name: p.stat().st_size for p in d.iterdir()})
    print(json.dumps(r), flush=True)
    out.append(r)
Path("/tmp/mkt/gen_sizes.json").write_text(json.dumps(out, indent=1))
