import json, sys, glob, re, collections, statistics
d=sys.argv[1]; rows=collections.defaultdict(list)
for f in sorted(glob.glob(d+"/*.json")):
    name=re.sub(r"-r\d+\.json$","",f.split("/")[-1]); j=json.load(open(f))
    for sc in j["scenarios"]:
        for r in [x for x in sc.get("runs",[]) if "cpu_ms_per_msg" in x]:
            c=r["cpu_ms_per_msg"]; ing=c.get("tern ingest",0); wk=c.get("tern worker 1",0); rd=c.get("redis-server",0); inj=r["injector_cpu_ms_per_msg"]
            rows[name].append((ing/inj, wk/inj, rd/inj, (ing+wk+rd)/inj))
for n,rs in rows.items():
    m=lambda i: statistics.median(x[i] for x in rs)
    print(f"{n:8s} per injector-ms: ingest {m(0):.3f} worker {m(1):.3f} redis {m(2):.3f} total {m(3):.3f}")
