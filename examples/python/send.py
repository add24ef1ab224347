#!/usr/bin/env python3
"""Sends mail through tern's gRPC Send API (tern.v1.Submission) from Python.

Setup (once):

    python3 -m venv .venv && .venv/bin/pip install grpcio grpcio-tools
    .venv/bin/python -m grpc_tools.protoc -I proto --python_out=examples/python \
        --grpc_python_out=examples/python proto/tern/v1/submission.proto

Run:

    .venv/bin/python examples/python/send.py --target 127.0.0.1:7071 --key "$TERN_API_KEY" \
        --from app@example.com --to you@example.net

It sends one composed message (text, HTML and an attachment), one raw RFC 5322 message, and a batch of two
(one of them invalid, to show a per-message error), and prints one line per result. The exit status is 0
when everything behaved as expected. `tern`'s own tests run this script against a real server.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402

from tern.v1 import submission_pb2 as pb  # noqa: E402
from tern.v1 import submission_pb2_grpc as pb_grpc  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:7071")
    parser.add_argument("--key", default=os.environ.get("TERN_API_KEY", ""))
    parser.add_argument("--from", dest="sender", default="app@example.com")
    parser.add_argument("--to", default="you@example.net")
    args = parser.parse_args()

    metadata = [("authorization", f"Bearer {args.key}")] if args.key else []
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.SubmissionStub(channel)

        composed = pb.SendRequest(
            idempotency_key="python-example-1",
            composed=pb.ComposedMessage(
                subject="Hello from Python",
                text_body="Hello in plain text.",
                html_body="<p>Hello in <b>HTML</b>.</p>",
                attachments=[
                    pb.Attachment(filename="note.txt", content_type="text/plain", content=b"attached\n")
                ],
                headers={"X-Example": "python"},
                **{"from": args.sender, "to": [args.to]},
            ),
            tags={"source": "python-example"},
        )
        reply = stub.Send(composed, metadata=metadata)
        print(f"composed: queued as {reply.message_id} for {list(reply.accepted)}")

        raw = (
            f"From: {args.sender}\r\nTo: {args.to}\r\nSubject: raw from Python\r\n\r\nHi.\r\n"
        ).encode()
        reply = stub.Send(pb.SendRequest(raw=raw), metadata=metadata)
        print(f"raw: queued as {reply.message_id} for {list(reply.accepted)}")

        batch = pb.SendBatchRequest(
            messages=[
                pb.SendRequest(raw=raw),
                pb.SendRequest(
                    composed=pb.ComposedMessage(text_body="x", **{"from": args.sender, "to": ["not-an-address"]})
                ),
            ]
        )
        results = stub.SendBatch(batch, metadata=metadata).results
        ok = results[0].WhichOneof("result") == "ok" and results[1].WhichOneof("result") == "error"
        for i, r in enumerate(results):
            if r.WhichOneof("result") == "ok":
                print(f"batch[{i}]: queued as {r.ok.message_id}")
            else:
                print(f"batch[{i}]: error {grpc.StatusCode.INVALID_ARGUMENT.name if r.error.code == 3 else r.error.code}: {r.error.message}")

        try:
            stub.Send(pb.SendRequest(raw=b""), metadata=metadata)
            print("empty message: unexpectedly accepted")
            ok = False
        except grpc.RpcError as e:
            print(f"empty message: {e.code().name}: {e.details()}")
            ok = ok and e.code() == grpc.StatusCode.INVALID_ARGUMENT
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
