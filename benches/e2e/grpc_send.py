"""gRPC SendBatch load for benches/e2e/run (run with a Python that has `grpcio`).

The requests are encoded by hand (the few protobuf fields of proto/tern/v1/submission.proto that a raw
message with an explicit envelope needs), so no stubs are generated and no protobuf package is needed. Every
batch is serialised before the clock starts: the caller gets `READY` on stdout, writes `GO` to stdin, and
gets one JSON line with the results when all batches were answered.

Times are `time.monotonic()` (CLOCK_MONOTONIC, the same clock as the caller's on Linux).
"""

import argparse
import json
import sys
import threading
import time

import grpc

METHOD = "/tern.v1.Submission/SendBatch"


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, payload):
    """A length-delimited field (wire type 2)."""
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def read_varint(buf, pos):
    shift = 0
    value = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def fields(buf):
    """(number, wire type, value) of each top-level field; value is bytes for wire type 2, else an int."""
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value = buf[pos : pos + length]
            pos += length
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield number, wire, value


def message_bytes(index, rcpt, size):
    head = (
        f"From: bench@sender.test\r\nTo: {rcpt}\r\nSubject: e2e bench {index}\r\n"
        f"Date: Mon, 1 Dec 2025 00:00:00 +0000\r\nMessage-ID: <{index}.grpc@bench.test>\r\n\r\n"
    ).encode()
    line = b"x" * 78 + b"\r\n"
    body = line * (size // len(line)) + b"x" * (size % len(line)) + b"\r\n"
    return head + body


def build_batches(count, size, domains, batch):
    out = []
    for start in range(0, count, batch):
        requests = []
        for i in range(start, min(count, start + batch)):
            rcpt = f"user{i}@d{i % domains}.test"
            envelope = field(1, b"bench@sender.test") + field(2, rcpt.encode())
            requests.append(field(1, field(2, envelope) + field(3, message_bytes(i, rcpt, size))))
        out.append((min(count, start + batch) - start, b"".join(requests)))
    return out


def count_results(response):
    ok, errors, first_error = 0, 0, None
    for number, _, result in fields(response):
        if number != 1:
            continue
        for kind, _, detail in fields(result):
            if kind == 1:
                ok += 1
            elif kind == 2:
                errors += 1
                if first_error is None:
                    parts = {n: v for n, _, v in fields(detail)}
                    message = parts.get(2, b"")
                    first_error = f"code {parts.get(1, 0)}: {bytes(message).decode(errors='replace')}"
    return ok, errors, first_error


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port of the Send API")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--domains", type=int, required=True)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per call")
    args = parser.parse_args()

    batches = build_batches(args.count, args.size, args.domains, args.batch)
    channels = [
        grpc.insecure_channel(args.target, options=[("grpc.max_receive_message_length", 64 << 20)])
        for _ in range(args.callers)
    ]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 2

    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "errors": 0, "first_error": None, "failed_calls": 0, "call_error": None}
    started = time.monotonic()

    def caller(channel):
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        while True:
            with lock:
                index = state["next"]
                state["next"] += 1
            if index >= len(batches):
                return
            size, request = batches[index]
            try:
                response = call(request, timeout=args.deadline)
            except grpc.RpcError as error:
                with lock:
                    state["failed_calls"] += 1
                    state["errors"] += size
                    if state["call_error"] is None:
                        state["call_error"] = f"{error.code().name}: {error.details()}"
                continue
            ok, errors, first_error = count_results(response)
            with lock:
                state["ok"] += ok
                state["errors"] += errors
                if first_error and state["first_error"] is None:
                    state["first_error"] = first_error

    threads = [threading.Thread(target=caller, args=(c,)) for c in channels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = time.monotonic()
    print(
        json.dumps(
            {
                "started": started,
                "finished": finished,
                "accepted": state["ok"],
                "errors": state["errors"],
                "failed_calls": state["failed_calls"],
                "first_error": state["first_error"] or state["call_error"],
            }
        ),
        flush=True,
    )
    return 0 if state["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
