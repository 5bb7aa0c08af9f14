"""SearchContacts latency by kind of query, against a running contact service.

`crm bench --scenario search_contacts` reports one p99 over four kinds of query; this
tells which kind makes the tail, and which queries are the slowest. It reads people
from a file of `given<TAB>family<TAB>email` lines (a sample of the tenant), and asks
for each of them, one call at a time, the four queries `crm bench` makes: the first
four letters of the family name, the full name, the family name with one letter
changed, the first eight characters of the email.

    psql -h 127.0.0.1 -U postgres -d crm_1m -AtF $'\\t' -c "SELECT given_name, family_name,
      primary_email FROM crm_contact.contacts TABLESAMPLE SYSTEM (0.5) LIMIT 1500" > people.tsv
    (cd proto && python3 -m grpc_tools.protoc -I. --python_out=/tmp/stubs \\
      --grpc_python_out=/tmp/stubs $(find crm -name '*.proto'))
    python3 tests/bench/search_by_kind.py --stubs /tmp/stubs --people people.tsv \\
      --target 127.0.0.1:50051 --token "$(crm token issue --tenant bench --roles admin)"

The first pass over a new service also counts posting-list lengths (kept a minute);
run it twice to see both.
"""

import argparse
import collections
import random
import sys
import time

import grpc


def queries(rng, given, family, email):
    letters = list(family.lower())
    if len(letters) > 3:
        at = 1 + rng.randrange(len(letters) - 2)
        letters[at] = "a" if letters[at] == "e" else "e"
    return {
        "prefix4": family.lower()[:4],
        "full": f"{given} {family}",
        "typo": "".join(letters),
        "email8": email[:8],
    }


def quantile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", required=True, help="folder of the generated Python stubs")
    parser.add_argument("--people", required=True, help="given<TAB>family<TAB>email lines")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--token", required=True)
    parser.add_argument("--slowest", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    from crm.contact.v1 import contact_service_pb2_grpc, contacts_pb2

    people = [line.rstrip("\n").split("\t") for line in open(args.people, encoding="utf-8")]
    rng = random.Random(7)
    stub = contact_service_pb2_grpc.ContactServiceStub(grpc.insecure_channel(args.target))
    metadata = [("authorization", "Bearer " + args.token)]
    by_kind = collections.defaultdict(list)
    for given, family, email in people:
        for kind, query in queries(rng, given, family, email).items():
            start = time.perf_counter()
            stub.SearchContacts(
                contacts_pb2.SearchContactsRequest(query=query, page_size=20), metadata=metadata
            )
            by_kind[kind].append(((time.perf_counter() - start) * 1000, query))
    every = sorted(x for calls in by_kind.values() for x in calls)
    ms = [t for t, _ in every]
    print(f"all: {len(ms)} calls, p50 {quantile(ms, 0.5):.1f} ms, p99 {quantile(ms, 0.99):.1f} ms, "
          f"p999 {quantile(ms, 0.999):.1f} ms, max {ms[-1]:.1f} ms")
    for kind, calls in by_kind.items():
        times = sorted(t for t, _ in calls)
        print(f"{kind}: p50 {quantile(times, 0.5):.1f} ms, p99 {quantile(times, 0.99):.1f} ms, "
              f"max {times[-1]:.1f} ms, over 20 ms: {sum(1 for t in times if t > 20)}")
    print("slowest:", ", ".join(f"{q!r} {t:.1f} ms" for t, q in every[-args.slowest:]))


if __name__ == "__main__":
    main()
