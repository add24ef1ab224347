"""dkimpy's verdict on every DKIM-Signature of each message, with the keys looked up in DNS at 127.0.0.1:PORT.

Usage: verify.py DNS_PORT MESSAGE_FILE ...

Prints one JSON object: file name -> list of signatures in header order, each with its d=, s= and a= tags,
whether dkimpy verified it, and dkimpy's log for it (the reason when it did not).
"""

import io
import json
import logging
import sys

import dkim
import dkim.util
import dns.resolver

port = int(sys.argv[1])
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = port


def dnsfunc(name, timeout=5):
    """The TXT record at `name` from dnsmasq, its strings joined (as dkimpy's own lookup joins them)."""
    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = resolver.resolve(name, "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return b"".join(answer[0].strings)


results = {}
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        message = f.read()
    headers, _body = dkim.rfc822_parse(message)
    signatures = []
    fields = [value for name, value in headers if name.lower() == b"dkim-signature"]
    for i, value in enumerate(fields):
        tags = dkim.util.parse_tag_value(value)
        log = io.StringIO()
        logger = logging.getLogger(f"dkim.{path}.{i}")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(logging.StreamHandler(log))
        try:
            ok = bool(dkim.DKIM(message, logger=logger).verify(idx=i, dnsfunc=dnsfunc))
        except dkim.DKIMException as e:  # what dkim.verify() does: a failed check is a False
            logger.error("exception: %s", e)
            ok = False
        signatures.append(
            {
                "d": tags.get(b"d", b"").decode(),
                "s": tags.get(b"s", b"").decode(),
                "a": tags.get(b"a", b"").decode(),
                "ok": ok,
                "log": log.getvalue(),
            }
        )
    results[path] = signatures
print(json.dumps(results))
