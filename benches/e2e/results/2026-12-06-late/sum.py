import json, sys, glob, statistics, re, collections
d = sys.argv[1]
rows = collections.defaultdict(list)
for f in sorted(glob.glob(d + "/*.json")):
    name = re.sub(r"-r\d+\.json$", "", f.split("/")[-1])
    j = json.load(open(f))
    for sc in j["scenarios"]:
        for r in [x for x in sc.get("runs", []) if "cpu_ms_per_msg" in x]:
            c = r["cpu_ms_per_msg"]
            ing = sum(v for k, v in c.items() if "ingest" in k or k.startswith("tern all"))
            wk = sum(v for k, v in c.items() if "worker" in k)
            rd = c.get("redis-server", 0)
            rows[name].append((r["rate"], ing, wk, rd, ing + wk + rd, r.get("machine_busy_pct"), r.get("other_cpu_ms_per_msg"), r["redis_calls_per_msg"].get("fcall")))
for name, rs in rows.items():
    med = lambda i: statistics.median(x[i] for x in rs)
    print(f"{name:8s} n={len(rs)} rate {med(0):7.0f}  ingest {med(1):.4f} worker {med(2):.4f} redis {med(3):.4f} total {med(4):.4f}  [" + " ".join(f"{x[4]:.3f}" for x in rs) + "]" + f" other {med(6):.3f} fcall {med(7):.2f}")
