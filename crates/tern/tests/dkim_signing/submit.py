"""Submits messages over one SMTP connection with Python's smtplib, as a mail client would.

Usage: submit.py HOST PORT (MAIL_FROM RCPT[,RCPT...] MESSAGE_FILE)...

smtplib does the dot-stuffing. Prints a JSON list with the reply to each message's data ([code, text]).
"""

import json
import smtplib
import sys

host, port, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
replies = []
with smtplib.SMTP(host, port, local_hostname="client.test", timeout=30) as client:
    client.ehlo()
    for i in range(0, len(rest), 3):
        mail_from, rcpts, path = rest[i], rest[i + 1].split(","), rest[i + 2]
        with open(path, "rb") as f:
            message = f.read()
        code, text = client.mail(mail_from)
        if code != 250:
            raise SystemExit(f"MAIL FROM:<{mail_from}> answered {code} {text!r}")
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code not in (250, 251):
                raise SystemExit(f"RCPT TO:<{rcpt}> answered {code} {text!r}")
        code, text = client.data(message)
        replies.append([code, text.decode("utf-8", "replace")])
print(json.dumps(replies))
