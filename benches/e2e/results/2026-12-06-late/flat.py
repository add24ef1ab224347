import sys, re, collections
# leaf frame per sample, grouped
groups = collections.Counter(); leafs = collections.Counter(); total = 0
stack = []; 
def cat(f):
    if f.startswith("[k]") or "kallsyms" in f: return "kernel"
    for k, pat in [("jemalloc", r"_rjem_|je_|rallocx|sdallocx"), ("mem*", r"__mem(move|set|cmp|cpy)"), ("tokio", r"tokio::"), ("redis-rs", r"redis::|combine::"), ("tracing", r"tracing"), ("otel", r"opentelemetry"), ("tern", r"tern_"), ("libc", r"libc|__GI|epoll_wait|__send|__recv|pthread|__lll")]:
        if re.search(pat, f): return k
    return "other"
def flush():
    global total
    if not stack: return
    total += 1
    leaf = stack[0]
    groups[cat(leaf)] += 1
    leafs[leaf[:100]] += 1
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip(): flush(); stack = []; continue
    if line.startswith("\t") or line.startswith(" "):
        s = line.strip()
        parts = s.split(" ", 1)
        if len(parts) == 2:
            sym = parts[1]
            kernel = "kernel.kallsyms" in sym
            sym = re.sub(r"\+0x[0-9a-f]+", "", sym.rsplit(" (", 1)[0])
            stack.append(("[k]" if kernel else "") + sym)
    else: flush(); stack = []
flush()
print("samples", total)
for k, v in groups.most_common(): print(f"{k:10s} {v:6d} {100*v/total:5.1f}%")
print("--- top user leaves")
n=0
for k, v in leafs.most_common(200):
    if k.startswith("[k]"): continue
    print(f"{v:5d} {k}"); n+=1
    if n>=30: break
