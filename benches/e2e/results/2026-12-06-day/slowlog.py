import subprocess, sys, time, collections
port, secs = sys.argv[1], float(sys.argv[2])
def cli(*a):
    return subprocess.run(['redis-cli', '-p', port, *a], capture_output=True, text=True).stdout
def delivered():
    tot = 0
    for k in cli('--scan', '--pattern', '*:stats').split():
        v = cli('hget', k, 'delivered').strip()
        tot += int(v or 0)
    return tot
cli('config', 'set', 'slowlog-log-slower-than', '0'); cli('config', 'set', 'slowlog-max-len', '1000000')
cli('slowlog', 'reset')
d0 = delivered(); cli("slowlog","reset"); time.sleep(secs); d1 = delivered()
cli('config', 'set', 'slowlog-log-slower-than', '10000')
# RESP via python: use redis-cli --json? parse raw output: use a tiny resp reader
import socket
s = socket.create_connection(('127.0.0.1', int(port)))
s.sendall(b'*3\r\n$7\r\nSLOWLOG\r\n$3\r\nGET\r\n$2\r\n-1\r\n')
f = s.makefile('rb')
def read():
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t == b'*':
        n = int(rest); return [read() for _ in range(n)] if n >= 0 else None
    if t == b'$':
        n = int(rest)
        if n < 0: return None
        data = f.read(n + 2)[:-2]; return data
    if t == b':': return int(rest)
    return rest
entries = read()
stats = collections.defaultdict(lambda: [0, 0])
for e in entries:
    args = e[3]
    cmd = args[0].decode().lower()
    name = cmd
    if cmd == 'fcall': name = 'fcall ' + args[1].decode()
    stats[name][0] += 1; stats[name][1] += e[2]
n = d1 - d0
print(f"delivered in window: {n}")
for name, (c, us) in sorted(stats.items(), key=lambda x: -x[1][1]):
    print(f"{name:28s} calls {c:7d} per msg {c/max(n,1):6.3f}  us/call {us/c:7.1f}  us/msg {us/max(n,1):6.1f}")
