import sys, re, collections
c = collections.Counter(); total=0; stack=[]
def flush():
    global total
    if not stack: return
    total += 1
    k = [f for f in stack if f.startswith("[k]")]
    if not k: c["user"] += 1; return
    name = None
    for f in reversed(k):
        m = re.search(r"__x64_sys_(\w+)|(exit_to_user_mode|asm_sysvec\w+|asm_common_interrupt|irq\w*)", f)
        if m: name = m.group(1) or m.group(2); break
    c[name or "kernel-other:"+k[-1][:40]] += 1
for line in sys.stdin:
    line=line.rstrip("\n")
    if not line.strip(): flush(); stack=[]; continue
    if line.startswith("\t") or line.startswith(" "):
        parts=line.strip().split(" ",1)
        if len(parts)==2:
            sym=parts[1]; kern="kernel.kallsyms" in sym
            stack.append(("[k]" if kern else "")+re.sub(r"\+0x[0-9a-f]+","",sym.rsplit(" (",1)[0]))
    else: flush(); stack=[]
flush()
print("samples", total)
for k,v in c.most_common(20): print(f"{v:6d} {100*v/total:5.1f}% {k}")
