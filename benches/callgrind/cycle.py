#!/usr/bin/env python3
"""Drives tern-queue's Redis Functions on a redis-server running under callgrind, phase by phase.

Used by run.sh (see there). Stdlib only: it speaks RESP over a socket, and loads the library as
crates/tern-queue/src/redis/library.rs puts it together (same name, same version hash). Phases: the batched
cycle, shaped like benches/queue.rs's cycles (`materialise` calls of 500 one-recipient messages over 100
domains, each job's record written first by a plain SET ... NX PX as RedisQueue does; claims of up to 50
jobs with the claimer's MGET of the records; one `complete` per claim), then single calls as one queue call
each, on another shard with 20 domains: one-message enqueues, claims of 1 job, completes of 1 job, first and
second heartbeats (extend), in rounds of 50 calls per phase. callgrind is told to dump after each phase; a
line `phase <label> <count> <unit>` per phase tells run.sh what to divide by (and run.sh adds up the rounds).
"""
import os
import socket
import subprocess
import sys

OPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'crates', 'tern-queue', 'src', 'redis',
                   'ops')
# The operations' files in the library's order (library.rs BODY).
OPERATIONS = ['enqueue', 'claim', 'complete', 'extend', 'release', 'hold', 'reap', 'admin', 'read']
NOW = 1795889231049
# The batched cycle runs on one shard, the single calls on another (a small queue: 20 domains, at most
# ROUND claims live at once), each single call 1 ms after the previous one.
CYCLE_SHARD = '{t:s00}:'
SINGLE_SHARD = '{t:s01}:'
BATCH = 500
# Redis runs a step of Lua's garbage collector every 50 function calls: every reported phase of single calls
# is ROUND = 50 calls in a row, so that each holds exactly one step.
ROUNDS, ROUND = 4, 50
BODY = 'x' * 1024
# The fast path's materialise arguments before the message count: no intake marker, the repeat set of the
# messages' id bucket kept for the default repeat window and a call's time (60 s + 7 s), the default domain
# concurrency, and the message history's retention (queue.history's default, 7 days, in ms; '0' keeps none).
HISTORY = str(7 * 24 * 3600 * 1000)
FAST_PATH = ['0', 'seen:%d' % (NOW // 10000), '67000', '10', HISTORY]
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

    def pipe(self, cmds):
        self.s.sendall(b''.join(enc(c) for c in cmds))
        return [self.read() for _ in cmds]

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


def fnv1a(data):
    h = 0x811c9dc5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xffffffff
    return h


def library():
    """The library's name and source, as library.rs makes them."""
    def read(name):
        with open(os.path.join(OPS, name + '.lua'), encoding='utf-8') as f:
            return f.read()
    body = read('shared') + ''.join('do\n' + read(op) + 'end\n' for op in OPERATIONS)
    name = 'tern_%08x' % fnv1a(body.encode())
    return name, "#!lua name=%s\nlocal FUNCTION_PREFIX = '%s_'\n%s" % (name, name, body)


def main():
    port, batches, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    r = Redis(port)
    r.cmd('FLUSHALL')
    name, source = library()
    r.cmd('FUNCTION', 'LOAD', 'REPLACE', source)

    def call(shard, now, operation, *a):
        """One function call as RedisQueue sends it: a key of the shard, its prefix, now, the events cap, now's
        minute."""
        return ['FCALL', name + '_' + operation, '1', shard + 'domains', shard, str(now), '100000',
                str(now // 60000)] + list(a)

    def dump(label, count, unit):
        subprocess.run(['callgrind_control', '-d', label, pid], capture_output=True, check=False)
        print('phase', label, count, unit)

    def skip():
        """Counts since the last dump are not reported."""
        subprocess.run(['callgrind_control', '-z', pid], capture_output=True, check=False)

    seq = [0]

    def message(shard, domain):
        """One one-recipient message to `domain`: its record's SET and its materialise arguments."""
        seq[0] += 1
        msg = '01M8HNDX69CY3TGVRQ30D%05d' % seq[0]
        rcpt = 'user%d@%s' % (seq[0], domain)
        header = 'q' + '-' * 26 + '\t' + '\t'.join(
            [domain, '1', str(NOW), str(NOW), 'bench@sender.test', '{}', '', '1', rcpt])
        put = ['SET', shard + 'jd:' + msg + '.0', header + '\n' + ENV + '\n' + BODY, 'NX', 'PX', '3600000']
        return put, [msg, '', 'bench@sender.test', str(NOW), '{}', '1', '1', str(NOW), msg + '.0', domain, str(NOW), '1', rcpt]

    claims_made = [0]

    def claim(shard, now, max_jobs, limit):
        """A claim and the claimer's MGET of the records: (claim id, job ids, domain), or None."""
        claims_made[0] += 1
        claim_id = 'CLAIM%021d' % claims_made[0]
        rep = r.cmd(*call(shard, now, 'claim', 'w1', str(max_jobs), str(now + 300000), str(limit), claim_id, '10',
                          str(now + 250), str(now + 1), '1', '0'))
        if rep is None:
            return None
        ids = [e if isinstance(e, bytes) else e[0] for e in rep[2:]]
        keys = []
        for i in ids:
            keys += [shard.encode() + b'jd:' + i, shard.encode() + b'body:' + i.rsplit(b'.', 1)[0]]
        r.cmd('MGET', *keys)
        return claim_id, ids, rep[0].decode()

    def complete(shard, now, claim_id, ids):
        args = ['w1', HISTORY, str(len(ids))]
        for k, i in enumerate(ids):
            if k == 0:
                args += [i.decode(), claim_id, 'delivered', '', '250 2.0.0 ok', 'mx.d1.test', '127.0.0.1', 'TLSv1.3',
                         '', '0']
            else:
                args += [i.decode(), '=', '0']
        res = r.cmd(*call(shard, now, 'complete', *args))
        assert all(x[0] == b'finished' for x in res), res[:3]

    skip()
    # The batched cycle: per job.
    for _ in range(batches):
        puts, args = [], FAST_PATH + [str(BATCH)]
        for i in range(BATCH):
            put, margs = message(CYCLE_SHARD, 'd%d.test' % (i % 100))
            puts.append(put)
            args += margs
        replies = r.pipe(puts + [call(CYCLE_SHARD, NOW, 'materialise', *args)])
        assert replies[-1] == BATCH, replies[-1]
    dump('enqueue', batches * BATCH, 'job')
    claims = []
    while True:
        c = claim(CYCLE_SHARD, NOW, 50, 10)
        if c is None:
            break
        claims.append(c)
    assert sum(len(ids) for _, ids, _ in claims) == batches * BATCH
    dump('claim', batches * BATCH, 'job')
    for claim_id, ids, _ in claims:
        complete(CYCLE_SHARD, NOW, claim_id, ids)
    dump('complete', batches * BATCH, 'job')

    # Single calls, as one queue call each, in rounds of ROUND calls per phase: one-message enqueues, claims
    # of 1 job, then completes of those jobs; again enqueues and claims, then first and second heartbeats
    # of those jobs (completed afterwards, unreported). run.sh adds up the rounds of each phase.
    now = NOW

    def enqueue_and_claim():
        nonlocal now
        for i in range(ROUND):
            now += 1
            put, margs = message(SINGLE_SHARD, 'e%d.test' % (i % 20))
            replies = r.pipe([put, call(SINGLE_SHARD, now, 'materialise', *FAST_PATH, '1', *margs)])
            assert replies[-1] == 1, replies
        dump('enqueue1', ROUND, 'call')
        singles = []
        for _ in range(ROUND):
            now += 1
            c = claim(SINGLE_SHARD, now, 1, 10)
            assert c is not None and len(c[1]) == 1, c
            singles.append(c)
        dump('claim1', ROUND, 'call')
        return singles

    for _ in range(ROUNDS):
        for claim_id, ids, _ in enqueue_and_claim():
            now += 1
            complete(SINGLE_SHARD, now, claim_id, ids)
        dump('complete1', ROUND, 'call')
        singles = enqueue_and_claim()
        for label in ('extend1', 'extend2'):
            for claim_id, ids, domain in singles:
                now += 1
                rep = r.cmd(*call(SINGLE_SHARD, now, 'extend', ids[0].decode(), 'w1', claim_id, str(now + 300000),
                                  domain))
                assert rep[0] == b'ok', rep
            dump(label, ROUND, 'call')
        for claim_id, ids, _ in singles:
            now += 1
            complete(SINGLE_SHARD, now, claim_id, ids)
        skip()
    print('jobs', seq[0])


if __name__ == '__main__':
    main()
