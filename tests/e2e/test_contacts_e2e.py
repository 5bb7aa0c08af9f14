"""End-to-end test of the contact service (and a smoke test of the other three) through
Python stubs generated from the repo's protos: a polyglot client talking to the real
processes over gRPC, against a real Postgres database and Redis cache.

The tests of this module build on each other (they share the contacts created first)
and run in file order.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from conftest import SERVICES, mint_token
from crm.common.v1 import events_pb2
from crm.contact.v1 import contact_service_pb2_grpc, contacts_pb2
from crm.pipeline.v1 import leads_pb2, pipeline_service_pb2_grpc

CREATED = "crm.contact.v1.ContactCreated"
UPDATED = "crm.contact.v1.ContactUpdated"
HEARTBEAT = "crm.common.v1.Heartbeat"
RPC_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


class EventCollector:
    """Consumes a WatchEvents stream in a background thread."""

    def __init__(self, call, label: str):
        self.call = call
        self.label = label
        self.events: list = []
        self.error: BaseException | None = None
        self.opened_at = time.monotonic()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"watch-{label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.call:
                with self._cond:
                    self.events.append((time.monotonic(), event))
                    self._cond.notify_all()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        except BaseException as err:  # pragma: no cover - reported by the test
            self.error = err
        finally:
            with self._cond:
                self._cond.notify_all()

    def snapshot(self) -> list:
        with self._cond:
            return [event for _, event in self.events]

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate([event for _, event in self.events]):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.error is not None) or not self._thread.is_alive():
                    return predicate([event for _, event in self.events])
                self._cond.wait(remaining)

    def stop(self) -> None:
        self.call.cancel()
        self._thread.join(timeout=10)


def domain_events(events) -> list:
    return [e for e in events if e.type != HEARTBEAT]


def expect_rpc_error(code: grpc.StatusCode, fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    return err


def error_details(err: grpc.RpcError):
    """The google.rpc details of an error: (ErrorInfo | None, BadRequest | None)."""
    status = rpc_status.from_call(err)
    assert status is not None, f"the error carries no grpc-status-details-bin: {err.details()}"
    info = bad_request = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
    return status, info, bad_request


def make_contact(i: int, run: str) -> contacts_pb2.Contact:
    return contacts_pb2.Contact(
        given_name=f"Ada{i}",
        family_name=f"Lovelace-{run}",
        emails=[contacts_pb2.EmailAddress(address=f"Mixed.Case.{i}.{run}@Example.com")],
        phones=[contacts_pb2.PhoneNumber(number=f"+41 44 668 18 0{i}")],
    )


@dataclass
class State:
    """What the tests of this module share."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    contacts: list = field(default_factory=list)
    create_request_ids: list = field(default_factory=list)
    create_requests: list = field(default_factory=list)
    updated = None
    etag_before_update: str = ""


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channels(suite):
    chans = {name: grpc.insecure_channel(suite.target(name)) for name in SERVICES}
    try:
        for name, chan in chans.items():
            try:
                grpc.channel_ready_future(chan).result(timeout=10)
            except grpc.FutureTimeoutError:
                pytest.fail(f"cannot connect to {name} at {suite.target(name)}")
        yield chans
    finally:
        for chan in chans.values():
            chan.close()


@pytest.fixture(scope="module")
def contacts(channels):
    return contact_service_pb2_grpc.ContactServiceStub(channels["crm-contact"])


@pytest.fixture(scope="module")
def pipeline(channels):
    return pipeline_service_pb2_grpc.PipelineServiceStub(channels["crm-pipeline"])


@pytest.fixture(scope="module")
def state() -> State:
    return State()


@pytest.fixture(scope="module")
def contact_watch(contacts, tenant_a):
    """A WatchEvents stream of tenant A, opened before any contact is created."""
    call = contacts.WatchEvents(
        events_pb2.WatchEventsRequest(after_position=0, heartbeat_seconds=1),
        metadata=tenant_a.metadata,
    )
    collector = EventCollector(call, "contact")
    # The stream is open once the first heartbeat (or event) arrives.
    if not collector.wait_for(lambda events: len(events) > 0, timeout=5):
        collector.stop()
        pytest.fail(f"contact WatchEvents sent nothing within 5 s (error: {collector.error})")
    yield collector
    collector.stop()


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVICES))
def test_health_serving(channels, name):
    stub = health_pb2_grpc.HealthStub(channels[name])
    response = stub.Check(
        health_pb2.HealthCheckRequest(service=SERVICES[name]), timeout=RPC_TIMEOUT_S
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_create_contacts(contacts, tenant_a, state, contact_watch):
    for i in range(3):
        request_id = str(uuid.uuid4())
        request = contacts_pb2.CreateContactRequest(
            contact=make_contact(i, state.run), request_id=request_id
        )
        created = contacts.CreateContact(request, metadata=tenant_a.metadata, timeout=RPC_TIMEOUT_S)
        assert created.name.startswith("contacts/"), created.name
        assert len(created.name) > len("contacts/")
        assert [e.address for e in created.emails] == [f"mixed.case.{i}.{state.run}@example.com"]
        assert created.given_name == f"Ada{i}"
        assert created.family_name == f"Lovelace-{state.run}"
        assert created.etag != ""
        state.contacts.append(created)
        state.create_requests.append(request)
    assert len({c.name for c in state.contacts}) == 3


def test_create_contact_is_idempotent(contacts, tenant_a, state):
    assert len(state.contacts) == 3, "needs the contacts of test_create_contacts"
    again = contacts.CreateContact(
        state.create_requests[0], metadata=tenant_a.metadata, timeout=RPC_TIMEOUT_S
    )
    assert again.name == state.contacts[0].name


def test_list_contacts_pages_and_filter(contacts, tenant_a, state):
    assert len(state.contacts) == 3, "needs the contacts of test_create_contacts"
    md = tenant_a.metadata
    first = contacts.ListContacts(
        contacts_pb2.ListContactsRequest(page_size=2), metadata=md, timeout=RPC_TIMEOUT_S
    )
    assert len(first.contacts) == 2
    assert first.next_page_token != ""
    assert first.total_size == 3

    second = contacts.ListContacts(
        contacts_pb2.ListContactsRequest(page_size=2, page_token=first.next_page_token),
        metadata=md,
        timeout=RPC_TIMEOUT_S,
    )
    assert len(second.contacts) == 1
    assert second.next_page_token == ""
    assert second.total_size == 3
    listed = [c.name for c in first.contacts] + [c.name for c in second.contacts]
    # Default order is create_time: the order of creation, no contact twice.
    assert listed == [c.name for c in state.contacts]

    email = f"mixed.case.1.{state.run}@example.com"
    filtered = contacts.ListContacts(
        contacts_pb2.ListContactsRequest(filter=f'email = "{email}"'),
        metadata=md,
        timeout=RPC_TIMEOUT_S,
    )
    assert [c.name for c in filtered.contacts] == [state.contacts[1].name]
    assert filtered.total_size == 1
    assert filtered.next_page_token == ""


def test_update_contact_with_etag(contacts, tenant_a, state):
    assert len(state.contacts) == 3, "needs the contacts of test_create_contacts"
    target = contacts.GetContact(
        contacts_pb2.GetContactRequest(name=state.contacts[0].name),
        metadata=tenant_a.metadata,
        timeout=RPC_TIMEOUT_S,
    )
    old_etag = target.etag
    assert old_etag != ""

    def update(etag):
        return contacts.UpdateContact(
            contacts_pb2.UpdateContactRequest(
                contact=contacts_pb2.Contact(name=target.name, job_title="Chief Analyst"),
                update_mask=field_mask_pb2.FieldMask(paths=["job_title"]),
                etag=etag,
            ),
            metadata=tenant_a.metadata,
            timeout=RPC_TIMEOUT_S,
        )

    updated = update(old_etag)
    assert updated.name == target.name
    assert updated.job_title == "Chief Analyst"
    assert updated.etag != "" and updated.etag != old_etag
    # Fields outside the mask are untouched.
    assert updated.given_name == target.given_name
    assert [e.address for e in updated.emails] == [e.address for e in target.emails]
    state.updated = updated
    state.etag_before_update = old_etag

    # A read sees the update (and is not served a stale cached copy).
    reread = contacts.GetContact(
        contacts_pb2.GetContactRequest(name=target.name),
        metadata=tenant_a.metadata,
        timeout=RPC_TIMEOUT_S,
    )
    assert reread.job_title == "Chief Analyst"
    assert reread.etag == updated.etag

    # The same update against the old etag is a lost update: ABORTED.
    expect_rpc_error(grpc.StatusCode.ABORTED, update, old_etag)


def test_invalid_email_is_bad_request(contacts, tenant_a, state):
    err = expect_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        contacts.CreateContact,
        contacts_pb2.CreateContactRequest(
            contact=contacts_pb2.Contact(
                given_name="Bad",
                family_name="Email",
                emails=[contacts_pb2.EmailAddress(address="not-an-email")],
            )
        ),
        metadata=tenant_a.metadata,
        timeout=RPC_TIMEOUT_S,
    )
    status, info, bad_request = error_details(err)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad_request is not None, f"no google.rpc.BadRequest in the details: {status}"
    fields = [v.field for v in bad_request.field_violations]
    assert "contact.emails[0].address" in fields, fields
    assert info is not None, f"no google.rpc.ErrorInfo in the details: {status}"
    assert info.reason != ""


def test_other_tenant_sees_nothing(contacts, tenant_b, state):
    assert len(state.contacts) == 3, "needs the contacts of test_create_contacts"
    expect_rpc_error(
        grpc.StatusCode.NOT_FOUND,
        contacts.GetContact,
        contacts_pb2.GetContactRequest(name=state.contacts[0].name),
        metadata=tenant_b.metadata,
        timeout=RPC_TIMEOUT_S,
    )
    listed = contacts.ListContacts(
        contacts_pb2.ListContactsRequest(), metadata=tenant_b.metadata, timeout=RPC_TIMEOUT_S
    )
    assert len(listed.contacts) == 0
    assert listed.total_size == 0


def test_unauthenticated(contacts, suite, tenant_a):
    # No token at all.
    err = expect_rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        contacts.ListContacts,
        contacts_pb2.ListContactsRequest(),
        timeout=RPC_TIMEOUT_S,
    )
    _, info, _ = error_details(err)
    assert info is not None and info.reason != ""
    # A token signed with another secret.
    forged = mint_token("x" * 48, tenant_a.name, ["admin"])
    expect_rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        contacts.ListContacts,
        contacts_pb2.ListContactsRequest(),
        metadata=(("authorization", f"Bearer {forged}"),),
        timeout=RPC_TIMEOUT_S,
    )
    # An expired token.
    expired = mint_token(suite.secret, tenant_a.name, ["admin"], ttl_s=-3600)
    expect_rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        contacts.ListContacts,
        contacts_pb2.ListContactsRequest(),
        metadata=(("authorization", f"Bearer {expired}"),),
        timeout=RPC_TIMEOUT_S,
    )


def test_watch_events_saw_the_changes(contact_watch, tenant_a, state):
    assert len(state.contacts) == 3 and state.updated is not None, "needs the earlier tests"
    names = {c.name for c in state.contacts}

    def complete(events):
        domain = domain_events(events)
        return (
            sum(e.type == CREATED for e in domain) >= 3
            and sum(e.type == UPDATED for e in domain) >= 1
        )

    contact_watch.wait_for(complete, timeout=10)
    # Give a duplicate (e.g. from the idempotent retry) a moment to show up too.
    time.sleep(1.5)
    assert contact_watch.error is None, f"the watch stream failed: {contact_watch.error}"
    events = contact_watch.snapshot()
    domain = domain_events(events)
    summary = [(e.position, e.type, e.resource_name) for e in domain]

    created = [e for e in domain if e.type == CREATED]
    assert sorted(e.resource_name for e in created) == sorted(names), summary
    updated = [e for e in domain if e.type == UPDATED]
    assert [e.resource_name for e in updated] == [state.updated.name], summary
    assert len(domain) == 4, f"unexpected extra events: {summary}"

    positions = [e.position for e in domain]
    assert all(p > 0 for p in positions), summary
    assert all(a < b for a, b in zip(positions, positions[1:])), f"positions not increasing: {summary}"
    # Creations come before the update, which changed the first contact.
    assert domain[-1].type == UPDATED, summary
    assert len({e.id for e in domain}) == 4, summary
    for e in domain:
        assert e.tenant == tenant_a.name, summary

    # The update event names the changed field.
    assert "job_title" in [c.path for c in updated[0].changes], updated[0]

    heartbeats = [e for e in events if e.type == HEARTBEAT]
    assert heartbeats, "no heartbeat on a stream with heartbeat_seconds=1"


def test_watch_events_refuses_a_checkpoint_ahead_of_the_feed(contacts, tenant_a):
    """A consumer whose checkpoint is beyond the feed (taken before the database was
    restored from an older backup) is told so, instead of waiting for positions the
    feed will reach with other events."""

    def first_message(request, **kwargs):
        return next(contacts.WatchEvents(request, **kwargs))

    err = expect_rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        first_message,
        events_pb2.WatchEventsRequest(after_position=2**62, heartbeat_seconds=1),
        metadata=tenant_a.metadata,
        timeout=RPC_TIMEOUT_S,
    )
    _, info, _ = error_details(err)
    assert info is not None and info.reason == "CHECKPOINT_AHEAD_OF_FEED", info


def test_pipeline_watch_events_heartbeat(pipeline, tenant_a):
    call = pipeline.WatchEvents(
        events_pb2.WatchEventsRequest(after_position=0, heartbeat_seconds=1),
        metadata=tenant_a.metadata,
    )
    collector = EventCollector(call, "pipeline")
    try:
        got = collector.wait_for(
            lambda events: any(e.type == HEARTBEAT for e in events), timeout=3
        )
        assert collector.error is None, f"pipeline WatchEvents failed: {collector.error}"
        assert got, f"no heartbeat within 3 s; received {collector.snapshot()}"
    finally:
        collector.stop()


def test_pipeline_list_leads_unimplemented(pipeline, tenant_a):
    expect_rpc_error(
        grpc.StatusCode.UNIMPLEMENTED,
        pipeline.ListLeads,
        leads_pb2.ListLeadsRequest(),
        metadata=tenant_a.metadata,
        timeout=RPC_TIMEOUT_S,
    )


def test_logs_hold_no_personal_data_or_secrets(suite, tenant_a, tenant_b, state):
    """After the whole scenario (debug logging on), no service log contains a person's
    name, email address or phone number, a bearer token or the signing secret."""
    forbidden = [tenant_a.token, tenant_b.token, suite.secret]
    for i in range(3):
        forbidden += [
            f"Mixed.Case.{i}.{state.run}@Example.com",
            f"mixed.case.{i}.{state.run}@example.com",
            f"Lovelace-{state.run}",
            f"+4144668180{i}",
            f"44 668 18 0{i}",
        ]
    scanned = 0
    for sp in suite.procs.values():
        text = sp.log_path.read_text(errors="replace")
        scanned += len(text)
        for value in forbidden:
            assert value not in text, f"{sp.name} logged a secret or personal value ({value[:12]}...)"
    assert scanned > 1000, "the services wrote (almost) no logs: the scan would prove nothing"
