#!/usr/bin/env python3
"""Drives tern-queue's hot scripts on a redis-server running under callgrind, phase by phase.

Used by run.sh (see there). Stdlib only: it speaks RESP over a socket. The workload matches
benches/queue.rs's cycles in shape: `materialise` calls of 500 one-recipient messages over 100 domains
(each job's record written first by a plain SET ... NX PX, as RedisQueue does), then claims of up to 50 jobs
(with the claimer's MGET of the records), then one `complete` per claim. callgrind is told to dump after
each phase, so run.sh can report Redis instructions per job for each.
"""
import os
import socket
import subprocess
import sys

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'crates', 'tern-queue', 'src',
                       'redis', 'scripts')
NOW = '1795889231049'
TAG = '{t:s00}:'
BATCH = 500
BODY = 'x' * 1024
ENV = '{"from":"bench@sender.test","rcpt":[{"addr":"user1@d1.test"}],"ret":null,"envid":null}'


def enc(args):
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out += [b'$%d\r\n' % len(a), a, b'\r\n']
    return b''.join(out)


class Redis:
    def __init__(self, port):
        self.s = socket.create_connection(('127.0.0.1', port))
        self.f = self.s.makefile('rb')

    def cmd(self, *args):
        self.s.sendall(enc(args))
        return self.read()

    def read(self):
        line = self.f.readline()
        t, rest = line[:1], line[1:-2]
        if t == b'+':
            return rest.decode()
        if t == b'-':
            raise RuntimeError(rest.decode())
        if t == b':':
            return int(rest)
        if t == b'$':
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b'*':
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError('bad reply %r' % line)


def load(r, name):
    with open(os.path.join(SCRIPTS, 'common.lua')) as c, open(os.path.join(SCRIPTS, name + '.lua')) as s:
        return r.cmd('SCRIPT', 'LOAD', c.read() + s.read())


def main():
    port, batches, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    r = Redis(port)
    r.cmd('FLUSHALL')
    sha = {n: load(r, n) for n in ('materialise', 'claim', 'complete')}

    def ev(name, *a):
        return r.cmd('EVALSHA', sha[name], '1', TAG + 'x', TAG, NOW, '100000', *a)

    def dump(label):
        subprocess.run(['callgrind_control', '-d', label, pid], capture_output=True, check=False)

    subprocess.run(['callgrind_control', '-z', pid], capture_output=True, check=False)
    seq = 0
    for _ in range(batches):
        args = ['0', str(BATCH)]
        for i in range(BATCH):
            seq += 1
            msg = '01M8HNDX69CY3TGVRQ30D%05d' % seq
            dom = 'd%d.test' % (i % 100)
            rcpt = 'user%d@%s' % (seq, dom)
            header = 'q' + '-' * 26 + '\t' + '\t'.join(
                [dom, '1', NOW, NOW, 'bench@sender.test', '{}', '', '1', rcpt])
            r.cmd('SET', TAG + 'jd:' + msg + '.0', header + '\n' + ENV + '\n' + BODY, 'NX', 'PX', '3600000')
            args += [msg, '', 'bench@sender.test', NOW, '{}', '1', '1', msg + '.0', dom, NOW, '1', rcpt]
        ev('materialise', *args)
    dump('enqueue')
    claims = []
    while True:
        claim = 'CLAIM%021d' % (len(claims) + 1)
        rep = ev('claim', 'w1', '50', '300000', '10', claim, '10', '5000', '0')
        if rep is None:
            break
        ids = [e if isinstance(e, bytes) else e[0] for e in rep[4:]]
        keys = []
        for i in ids:
            keys += [TAG.encode() + b'jd:' + i, TAG.encode() + b'body:' + i.rsplit(b'.', 1)[0]]
        r.cmd('MGET', *keys)
        claims.append((claim, ids))
    dump('claim')
    done = 0
    for claim, ids in claims:
        args = ['w1', str(len(ids))]
        for k, i in enumerate(ids):
            if k == 0:
                args += [i.decode(), claim, 'delivered', '0', '250 2.0.0 ok', 'mx.d1.test', '127.0.0.1', 'TLSv1.3', '0']
            else:
                args += [i.decode(), '=', '0']
        res = ev('complete', *args)
        assert all(x[0] == b'finished' for x in res), res[:3]
        done += len(ids)
    dump('complete')
    print('jobs', done, 'claims', len(claims))


if __name__ == '__main__':
    main()
