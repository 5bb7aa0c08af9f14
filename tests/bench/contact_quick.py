"""Interim measurement of the contact service's import rate and search latency.

Until `crm bench` (issue #5) exists, this script gives the two figures issue #3 asks
for, against a running suite:

    python3 tests/bench/contact_quick.py --target 127.0.0.1:50051 --token "$TOKEN" \
        --contacts 100000 --searches 2000

It imports `--contacts` generated people (CREATE_ONLY, the tenant's duplicate rules
on, so every row is checked for duplicates) in messages of 1000 rows, and reports rows
per second; then it runs `--searches` SearchContacts calls one after another (prefix
and typo queries drawn from the imported names) and reports p50/p99/p999. It needs
grpcio-tools (the stubs are generated from proto/ into a temporary folder).
"""

from __future__ import annotations

import argparse
import random
import shutil
import string
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

GIVEN = ["Anna", "Ben", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Ines",
         "Jonas", "Katrin", "Lukas", "Mia", "Noah", "Olivia", "Paul", "Quentin", "Rosa",
         "Simon", "Tina", "Ueli", "Vera", "Walter", "Xenia", "Yann", "Zoe", "Léa", "Jürg"]
FAMILY = ["Müller", "Meier", "Schmid", "Keller", "Weber", "Huber", "Schneider", "Meyer",
          "Steiner", "Fischer", "Gerber", "Brunner", "Baumann", "Frei", "Zimmermann",
          "Moser", "Widmer", "Wyss", "Graf", "Roth", "Suter", "Baumgartner", "Bachmann",
          "Studer", "Bernasconi", "Rossi", "Dubois", "Favre", "Lopez", "Nguyen"]


def stubs():
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="crm_bench_stubs_")
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "crm").rglob("*.proto"))
    rc = protoc.main(["protoc", f"--proto_path={ROOT / 'proto'}",
                      f"--proto_path={files('grpc_tools') / '_proto'}",
                      f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    return out


def person(pb, i: int, rng: random.Random):
    given = rng.choice(GIVEN)
    family = rng.choice(FAMILY) + ("" if rng.random() < 0.5 else rng.choice(string.ascii_lowercase) * 2)
    return pb.Contact(
        given_name=given,
        family_name=family,
        emails=[pb.EmailAddress(address=f"{given}.{family}.{i}@example{i % 997}.com".lower())],
        phones=[pb.PhoneNumber(number=f"+4179{i:07d}")],
        tags=[rng.choice(["vip", "press", "partner", "lead-2026"])],
    )


def percentile(sorted_values, q):
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--token", required=True)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--searches", type=int, default=2_000)
    args = parser.parse_args()

    out = stubs()
    try:
        import grpc
        from crm.contact.v1 import contact_service_pb2_grpc as svc
        from crm.contact.v1 import contacts_pb2, operations_pb2

        channel = grpc.insecure_channel(args.target, options=[("grpc.max_receive_message_length", 64 << 20)])
        client = svc.ContactServiceStub(channel)
        metadata = [("authorization", f"Bearer {args.token}")]
        rng = random.Random(7)

        def requests():
            first = True
            for start in range(0, args.contacts, 1000):
                rows = [operations_pb2.ImportRow(row_id=str(i), contact=person(contacts_pb2, i, rng))
                        for i in range(start, min(start + 1000, args.contacts))]
                options = operations_pb2.ImportOptions(mode=operations_pb2.IMPORT_MODE_CREATE_ONLY, summary_only=True) if first else None
                first = False
                yield operations_pb2.ImportContactsRequest(options=options, rows=rows)

        began = time.perf_counter()
        summary = None
        for message in client.ImportContacts(requests(), metadata=metadata, timeout=3600):
            if message.HasField("summary"):
                summary = message.summary
        elapsed = time.perf_counter() - began
        print(f"import: {args.contacts} rows in {elapsed:.1f} s = {args.contacts / elapsed:,.0f} rows/s "
              f"(created {summary.created}, skipped {summary.skipped_duplicate}, rejected {summary.rejected})")

        queries = []
        for _ in range(args.searches):
            word = rng.choice(FAMILY).lower()
            kind = rng.random()
            if kind < 0.4:
                word = word[: max(3, len(word) - 2)]  # a prefix
            elif kind < 0.8 and len(word) > 4:
                i = rng.randrange(1, len(word) - 1)
                word = word[:i] + word[i + 1] + word[i] + word[i + 2:]  # a transposition
            queries.append(f"{rng.choice(GIVEN)} {word}")
        latencies = []
        for query in queries:
            t0 = time.perf_counter()
            client.SearchContacts(contacts_pb2.SearchContactsRequest(query=query), metadata=metadata, timeout=30)
            latencies.append((time.perf_counter() - t0) * 1e3)
        latencies.sort()
        print(f"search: {len(latencies)} queries over {args.contacts} contacts: p50 {percentile(latencies, 0.5):.1f} ms, "
              f"p99 {percentile(latencies, 0.99):.1f} ms, p999 {percentile(latencies, 0.999):.1f} ms")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
