"""XOAUTH2 peers: a relay that checks the exact XOAUTH2 string, and an OAuth 2.0 token endpoint.

relay HOST PORT DIR --cert C --key K --accept TOKEN [--accept TOKEN...]
    Implicit TLS. `AUTH XOAUTH2 <b64>` is decoded and logged to DIR/auth.log (one JSON string a line);
    a payload `user=<u>\\x01auth=Bearer <accepted token>\\x01\\x01` gets 235; any other the 334 JSON error
    challenge, then (after the client's empty line, logged as `<empty>` in DIR/commands.log) 535 5.7.8.
    Messages (DATA) are counted in DIR/messages.log.
token HOST PORT DIR --client-id ID --secret S --token T [--token T2 ...] [--expires N]
    POST with a client_credentials form for ID/S answers {"access_token": T, "expires_in": N}; anything
    else 401 {"error": "invalid_client"}. Each request's form goes to DIR/requests.log.
"""

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("mode")
ap.add_argument("host")
ap.add_argument("port", type=int)
ap.add_argument("out")
ap.add_argument("--cert")
ap.add_argument("--key")
ap.add_argument("--accept", action="append", default=[])
ap.add_argument("--client-id")
ap.add_argument("--secret")
# Repeated: the tokens handed out in turn, the last one from then on (a rotation at the provider).
ap.add_argument("--token", action="append", default=[])
ap.add_argument("--expires", type=int, default=3600)
args = ap.parse_args()


def log(name, line):
    with open(os.path.join(args.out, name), "a") as f:
        f.write(line + "\n")


def ready():
    open(os.path.join(args.out, "ready"), "w").close()


async def relay_session(reader, writer):
    def send(line):
        writer.write(line.encode() + b"\r\n")

    send("220 relay.oauth.test ESMTP")
    await writer.drain()
    authed = False
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            log("commands.log", line if line else "<empty>")
            up = line.upper()
            if up.startswith("EHLO"):
                for c in ["relay.oauth.test", "8BITMIME", "AUTH XOAUTH2 PLAIN"]:
                    writer.write(b"250-" + c.encode() + b"\r\n")
                send("250 ENHANCEDSTATUSCODES")
            elif up.startswith("AUTH XOAUTH2 "):
                payload = base64.b64decode(line.split(" ", 2)[2]).decode("utf-8", "replace")
                log("auth.log", json.dumps(payload))
                ok = any(payload == f"user={u}\x01auth=Bearer {t}\x01\x01"
                         for t in args.accept for u in [payload[5:].split("\x01")[0]])
                if ok:
                    authed = True
                    send("235 2.7.0 Accepted")
                else:
                    err = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
                    send("334 " + base64.b64encode(json.dumps(err).encode()).decode())
                    await writer.drain()
                    empty = await reader.readline()
                    log("commands.log", empty.decode().rstrip("\r\n") or "<empty>")
                    send("535 5.7.8 Username and Password not accepted")
            elif up.startswith("MAIL"):
                send("250 2.1.0 ok" if authed else "530 5.7.0 Authentication required")
            elif up.startswith("RCPT"):
                send("250 2.1.5 ok")
            elif up == "DATA":
                send("354 go ahead")
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                log("messages.log", "message")
                send("250 2.0.0 queued")
            elif up in ("RSET", "NOOP"):
                send("250 2.0.0 ok")
            elif up == "QUIT":
                send("221 2.0.0 bye")
                await writer.drain()
                return
            else:
                send("502 5.5.2 not implemented")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        return
    finally:
        writer.close()


async def relay():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server = await asyncio.start_server(relay_session, args.host, args.port, ssl=ctx)
    ready()
    async with server:
        await server.serve_forever()


class TokenHandler(BaseHTTPRequestHandler):
    served = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        log("requests.log", json.dumps({"path": self.path, "type": self.headers.get("Content-Type"), "form": body}))
        form = urllib.parse.parse_qs(body)
        good = (form.get("grant_type") == ["client_credentials"] and form.get("client_id") == [args.client_id]
                and form.get("client_secret") == [args.secret])
        token = args.token[min(TokenHandler.served, len(args.token) - 1)]
        if good:
            TokenHandler.served += 1
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": args.expires} if good \
            else {"error": "invalid_client"}
        data = json.dumps(answer).encode()
        self.send_response(200 if good else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


if args.mode == "relay":
    asyncio.run(relay())
else:
    server = HTTPServer((args.host, args.port), TokenHandler)
    ready()
    server.serve_forever()
