"""A recording mail exchanger for tests/dkim_signing.rs, on one or more addresses.

Usage: mx.py OUT_DIR LABEL=IP:PORT[:chunking] ...

Each listener offers PIPELINING and 8BITMIME, and CHUNKING (RFC 3030: BDAT) when its spec ends in
`:chunking`. Every transaction that reaches the end of its data is written to OUT_DIR/<n>.eml, the octets
received (DATA un-stuffed, or the BDAT chunks joined), after OUT_DIR/<n>.json: the listener's label, the
session number (counted over all listeners), the transaction's position in its session (1 for the first),
the MAIL and RCPT lines, "DATA" or "BDAT", and the outcome.

The first transaction on each listener whose header has `X-Test-Case: retry` is answered
`451 4.3.0` after its data (outcome "deferred"), as a receiver that greylists; every other one gets 250
(outcome "accepted"). Prints "listening" once every listener is bound.
"""

import asyncio
import itertools
import json
import os
import sys

out_dir = sys.argv[1]
specs = sys.argv[2:]
sessions = itertools.count(1)
messages = itertools.count(1)
deferred_on = set()


def save(record, data):
    """Writes the record, then the message under its final name, so a listed .eml has its .json."""
    n = next(messages)
    with open(os.path.join(out_dir, f"{n}.json"), "w") as f:
        json.dump(record, f)
    tmp = os.path.join(out_dir, f"{n}.eml.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(out_dir, f"{n}.eml"))


def header_of(data):
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


async def session(reader, writer, label, chunking):
    number = next(sessions)
    transactions = 0
    mail, rcpts, chunks = None, [], []

    def reply(line):
        writer.write(line.encode() + b"\r\n")

    def finish(data, via):
        nonlocal transactions, mail, rcpts, chunks
        transactions += 1
        retry_case = b"\nX-Test-Case: retry\r\n" in b"\n" + header_of(data)
        if retry_case and label not in deferred_on:
            deferred_on.add(label)
            outcome, answer = "deferred", "451 4.3.0 try again later"
        else:
            outcome, answer = "accepted", "250 2.0.0 accepted"
        record = {
            "listener": label,
            "session": number,
            "transaction": transactions,
            "mail": mail,
            "rcpts": rcpts,
            "via": via,
            "outcome": outcome,
        }
        save(record, data)
        mail, rcpts, chunks = None, [], []
        reply(answer)

    reply("220 mx.test ESMTP recording peer")
    await writer.drain()
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                caps = ["mx.test", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE 52428800"]
                if chunking:
                    caps.append("CHUNKING")
                for cap in caps[:-1]:
                    reply("250-" + cap)
                reply("250 " + caps[-1])
            elif verb == "MAIL":
                mail, rcpts, chunks = line, [], []
                reply("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(line)
                reply("250 2.1.5 ok")
            elif verb == "DATA":
                reply("354 end with <CRLF>.<CRLF>")
                await writer.drain()
                lines = []
                while True:
                    got = await reader.readline()
                    if not got:
                        return
                    if got == b".\r\n":
                        break
                    lines.append(got[1:] if got.startswith(b".") else got)
                finish(b"".join(lines), "DATA")
            elif verb == "BDAT" and chunking:
                parts = line.split()
                size = int(parts[1])
                chunks.append(await reader.readexactly(size))
                if len(parts) > 2 and parts[2].upper() == "LAST":
                    finish(b"".join(chunks), "BDAT")
                else:
                    reply(f"250 2.0.0 {size} octets received")
            elif verb == "RSET":
                mail, rcpts, chunks = None, [], []
                reply("250 2.0.0 ok")
            elif verb == "NOOP":
                reply("250 2.0.0 ok")
            elif verb == "QUIT":
                reply("221 2.0.0 bye")
                await writer.drain()
                return
            else:
                reply("502 5.5.2 not implemented")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main():
    servers = []
    for spec in specs:
        label, where = spec.split("=", 1)
        parts = where.split(":")
        chunking = len(parts) > 2 and parts[2] == "chunking"

        def handler(r, w, label=label, chunking=chunking):
            return session(r, w, label, chunking)

        servers.append(await asyncio.start_server(handler, parts[0], int(parts[1])))
    print("listening", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
