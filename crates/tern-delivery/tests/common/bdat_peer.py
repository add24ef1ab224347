"""A scriptable SMTP receiver with CHUNKING (RFC 3030): BDAT, BINARYMIME and PIPELINING, and DATA.

Usage: bdat_peer.py HOST PORT OUT_DIR [--no-chunking] [--no-binarymime] [--fail-chunk N] [--fail-reply TEXT]

Each accepted message is written to OUT_DIR/<n>.eml, the exact octets received (BDAT chunks joined, DATA
un-stuffed), with OUT_DIR/<n>.json: the MAIL line, the RCPT lines, the BDAT sizes and whether each chunk's
command was already waiting when the previous chunk was answered (the client pipelined it). Every command
line goes to OUT_DIR/commands.log; each session start to OUT_DIR/sessions.log. `--fail-chunk N` answers the
transaction's chunk N (from 0) and every later one with `--fail-reply` (the server discards the message).
"""

import argparse
import asyncio
import json
import os

ap = argparse.ArgumentParser()
ap.add_argument("host")
ap.add_argument("port", type=int)
ap.add_argument("out")
ap.add_argument("--no-chunking", action="store_true")
ap.add_argument("--no-binarymime", action="store_true")
ap.add_argument("--fail-chunk", type=int, default=-1)
ap.add_argument("--fail-reply", default="554 5.6.0 chunk refused")
args = ap.parse_args()
counter = [0]


def log(name, line):
    with open(os.path.join(args.out, name), "a") as f:
        f.write(line + "\n")


def save(mail, rcpts, data, sizes, pipelined):
    counter[0] += 1
    n = counter[0]
    with open(os.path.join(args.out, f"{n}.eml.tmp"), "wb") as f:
        f.write(data)
    meta = {"mail": mail, "rcpts": rcpts, "bdat_sizes": sizes, "pipelined": pipelined}
    with open(os.path.join(args.out, f"{n}.json"), "w") as f:
        json.dump(meta, f)
    os.rename(os.path.join(args.out, f"{n}.eml.tmp"), os.path.join(args.out, f"{n}.eml"))


async def session(reader, writer):
    log("sessions.log", "session")

    def send(line):
        writer.write(line.encode() + b"\r\n")

    writer.write(b"220 bdat-peer.test ESMTP\r\n")
    await writer.drain()
    mail, rcpts, chunks, sizes, pipelined, failed = None, [], [], [], [], None
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            log("commands.log", line)
            up = line.upper()
            if up.startswith("EHLO"):
                caps = ["bdat-peer.test", "PIPELINING", "8BITMIME", "SIZE 100000000", "ENHANCEDSTATUSCODES"]
                if not args.no_chunking:
                    caps.append("CHUNKING")
                if not args.no_binarymime:
                    caps.append("BINARYMIME")
                for c in caps[:-1]:
                    writer.write(b"250-" + c.encode() + b"\r\n")
                send("250 " + caps[-1])
            elif up.startswith("MAIL"):
                mail, rcpts, chunks, sizes, pipelined, failed = line, [], [], [], [], None
                send("250 2.1.0 ok")
            elif up.startswith("RCPT"):
                rcpts.append(line)
                send("250 2.1.5 ok")
            elif up.startswith("BDAT"):
                parts = line.split()
                size = int(parts[1])
                last = len(parts) > 2 and parts[2].upper() == "LAST"
                chunk = await reader.readexactly(size)
                index = len(sizes)
                sizes.append(line[5:])
                if mail is None or not rcpts:
                    send("503 5.5.1 no transaction")
                    continue
                if failed is None and index == args.fail_chunk:
                    failed = args.fail_reply
                if failed is not None:
                    # A failed transaction: discard, and answer the chunks still coming alike.
                    await asyncio.sleep(0.1)
                    pipelined.append(len(reader._buffer) > 0)
                    send(failed)
                    if last:
                        mail, rcpts = None, []
                    continue
                chunks.append(chunk)
                if not last:
                    # Give a pipelining client time to send the next chunk before this one is answered.
                    await asyncio.sleep(0.1)
                    pipelined.append(len(reader._buffer) > 0)
                    send(f"250 2.0.0 {size} octets received")
                else:
                    save(mail, rcpts, b"".join(chunks), sizes, pipelined)
                    mail, rcpts = None, []
                    send(f"250 2.0.0 message of {sum(map(len, chunks))} octets queued")
            elif up == "DATA":
                send("354 go ahead")
                await writer.drain()
                data = bytearray()
                while True:
                    l = await reader.readline()
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b".") else l
                save(mail, rcpts, bytes(data), [], [])
                mail, rcpts = None, []
                send("250 2.0.0 queued")
            elif up == "RSET":
                mail, rcpts, chunks, sizes, pipelined, failed = None, [], [], [], [], None
                send("250 2.0.0 ok")
            elif up == "NOOP":
                send("250 2.0.0 ok")
            elif up == "QUIT":
                send("221 2.0.0 bye")
                await writer.drain()
                return
            else:
                send("502 5.5.2 not implemented")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(session, args.host, args.port)
    open(os.path.join(args.out, "ready"), "w").close()
    async with server:
        await server.serve_forever()


asyncio.run(main())
