"""Prints Redis's slow log as tab-separated lines (id, duration in us, command[:function], argument count),
then resets it. Usage: slowlog-dump.py PORT. Run every half second beside a redis-server started with
--slowlog-log-slower-than 0 (slowlog-redis-wrapper.sh); entries logged between the read and the reset are lost."""
import socket
import sys

port = int(sys.argv[1])
conn = socket.create_connection(("127.0.0.1", port))
reader = conn.makefile("rb")


def send(*args):
    out = b"*%d\r\n" % len(args)
    for arg in args:
        arg = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    conn.sendall(out)
    return read()


def read():
    line = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        count = int(rest)
        return [read() for _ in range(count)] if count >= 0 else None
    if kind == b"$":
        length = int(rest)
        return None if length < 0 else reader.read(length + 2)[:-2]
    if kind == b":":
        return int(rest)
    if kind in (b"+", b"-"):
        return rest
    raise ValueError(line)


entries = send("SLOWLOG", "GET", "-1")
send("SLOWLOG", "RESET")
for entry in entries:
    args = entry[3]
    name = args[0].decode(errors="replace").lower()
    if name in ("fcall", "fcall_ro") and len(args) > 1:
        name += ":" + args[1].decode(errors="replace")
    print(f"{entry[0]}\t{entry[2]}\t{name}\t{len(args)}")
