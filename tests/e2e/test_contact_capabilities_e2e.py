"""End to end through the separate crm-contact process (Postgres, Redis): bulk import,
search with a typo, duplicates and merge, consent, and GDPR erasure, from a Python
client generated from the protos.
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from conftest import mint_token
from crm.common.v1 import types_pb2
from crm.contact.v1 import (
    consent_pb2,
    contact_service_pb2_grpc,
    contacts_pb2,
    duplicates_pb2,
    operations_pb2,
)

TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def client(suite):
    channel = grpc.insecure_channel(suite.target("crm-contact"))
    grpc.channel_ready_future(channel).result(timeout=10)
    yield contact_service_pb2_grpc.ContactServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def auth(suite):
    tenant = f"capabilities-{uuid.uuid4().hex[:8]}"
    return (("authorization", f"Bearer {mint_token(suite.secret, tenant, ['admin'], sub='carol')}"),)


def person(given: str, family: str, email: str) -> contacts_pb2.Contact:
    return contacts_pb2.Contact(
        given_name=given, family_name=family, emails=[contacts_pb2.EmailAddress(address=email)]
    )


def test_import_search_merge_and_erase(client, auth):
    rows = [
        operations_pb2.ImportRow(row_id="1", contact=person("Margarethe", "Zwicky", "m.zwicky@example.org")),
        operations_pb2.ImportRow(row_id="2", contact=person("Margrit", "Zwicky", "margrit@zwicky.example")),
        operations_pb2.ImportRow(row_id="3", contact=person("Bad", "Row", "not-an-email")),
        operations_pb2.ImportRow(row_id="4", contact=person("Mägi", "Zwicky", "M.Zwicky@example.org")),
    ]
    requests = iter([
        operations_pb2.ImportContactsRequest(
            options=operations_pb2.ImportOptions(mode=operations_pb2.IMPORT_MODE_CREATE_ONLY),
            rows=rows,
        )
    ])
    results = {}
    summary = None
    for message in client.ImportContacts(requests, metadata=auth, timeout=TIMEOUT_S):
        results.update({r.row_id: r for r in message.results})
        if message.HasField("summary"):
            summary = message.summary
    assert (summary.created, summary.rejected, summary.skipped_duplicate) == (2, 1, 1)
    assert results["3"].reason == "INVALID_EMAIL"
    assert results["4"].outcome == operations_pb2.IMPORT_ROW_OUTCOME_SKIPPED_DUPLICATE
    first, second = results["1"].contact, results["2"].contact

    # A typo still finds her.
    found = client.SearchContacts(
        contacts_pb2.SearchContactsRequest(query="margarehte zwicky"), metadata=auth, timeout=TIMEOUT_S
    )
    assert [r.contact.name for r in found.results][:1] == [first]

    # Consent on the second, then merge the second into the first.
    client.RecordConsent(
        consent_pb2.RecordConsentRequest(
            consent_record=consent_pb2.ConsentRecord(
                contact=second,
                channel=types_pb2.CHANNEL_EMAIL,
                purpose=consent_pb2.CONSENT_PURPOSE_MARKETING,
                status=consent_pb2.CONSENT_STATUS_OPTED_IN,
                source="e2e",
            )
        ),
        metadata=auth,
        timeout=TIMEOUT_S,
    )
    merged = client.MergeContacts(
        duplicates_pb2.MergeContactsRequest(winner=first, losers=[second], request_id=str(uuid.uuid4())),
        metadata=auth,
        timeout=TIMEOUT_S,
    )
    assert merged.consent_records_moved == 1
    assert client.GetContact(contacts_pb2.GetContactRequest(name=second), metadata=auth, timeout=TIMEOUT_S).name == first

    # Erase her: nothing personal is left, and she cannot come back.
    erased = client.ErasePersonalData(
        consent_pb2.ErasePersonalDataRequest(contact=first, reason="e2e erasure"), metadata=auth, timeout=TIMEOUT_S
    )
    assert erased.addresses_suppressed == 2
    got = client.GetContact(contacts_pb2.GetContactRequest(name=first), metadata=auth, timeout=TIMEOUT_S)
    assert not got.given_name and not got.emails
    consent = client.GetConsent(
        consent_pb2.GetConsentRequest(email_address="margrit@zwicky.example"), metadata=auth, timeout=TIMEOUT_S
    )
    email = [c for c in consent.consents if c.channel == types_pb2.CHANNEL_EMAIL]
    assert email and all(c.status == consent_pb2.CONSENT_STATUS_OPTED_OUT and c.suppressed for c in email)
    with pytest.raises(grpc.RpcError) as refused:
        client.CreateContact(
            contacts_pb2.CreateContactRequest(contact=person("M", "Z", "m.zwicky@example.org")),
            metadata=auth,
            timeout=TIMEOUT_S,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not client.SearchContacts(
        contacts_pb2.SearchContactsRequest(query="zwicky"), metadata=auth, timeout=TIMEOUT_S
    ).results
