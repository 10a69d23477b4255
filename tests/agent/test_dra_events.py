"""A claim's failure as a Kubernetes Event on the ResourceClaim: one Event per claim,
reason and message, repeats counted and written again at most once per interval, a
restarted agent writing its own Event again, a refused post logged and the kubelet's
answer the same; a bad claim's Event through an in-process agent, the VF unchanged."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from sriovlib.agent.dra import DraOptions
from sriovlib.agent.draclaims import ClaimRef
from sriovlib.agent.draevents import ClaimEvents
from sriovlib.agent.kubeapi import AlreadyExists, Forbidden
from sriovlib.agent.runner import Agent
from sriovlib.pools import parse_config
from sriovlib.testing.drakubelet import (
    DraKubeletStandIn,
    FakeClaims,
    device_name_of,
    resource_claim,
)

from .conftest import CONFIG, Node
from .test_dra_ownership import MemoryApi

DRIVER = "sriov.sriovlib.io"
NET_VF = "0000:5e:00.2"
REF = ClaimRef("team-a", "net", "0d4f3c2e-0000-4000-8000-000000000001")
EVENTS = "/api/v1/namespaces/team-a/events"


class EventsApi:
    """The API server's Events, in memory (create is AlreadyExists for a known name)."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.refuse = refuse

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path))
        if self.refuse is not None:
            raise self.refuse
        name = body["metadata"]["name"]
        if name in self.events:
            raise AlreadyExists(f"POST {path}: 409 AlreadyExists: exists", 409, "AlreadyExists")
        self.events[name] = json.loads(json.dumps(body))
        return self.events[name]

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("PUT", path))
        self.events[body["metadata"]["name"]] = json.loads(json.dumps(body))
        return self.events[body["metadata"]["name"]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def started(api: Any, clock: Clock) -> ClaimEvents:
    events = ClaimEvents(api, driver=DRIVER, node_name="node1", interval=60, clock=clock)
    events.start()
    return events


def test_a_failure_is_an_event_on_the_claim(clock: Clock) -> None:
    api = EventsApi()
    events = started(api, clock)
    try:
        events.failed(REF, "PrepareFailed", "claim team-a/net: unknown key 'vlam'")
        events.wait_idle()
    finally:
        events.stop()
    ((name, event),) = api.events.items()
    assert api.calls == [("POST", EVENTS)]
    assert name.startswith("net.")
    assert event["involvedObject"] == {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "namespace": "team-a",
        "name": "net",
        "uid": REF.uid,
    }
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "PrepareFailed", 1)
    assert event["message"] == "claim team-a/net: unknown key 'vlam'"
    assert event["source"] == {"component": DRIVER, "host": "node1"}
    assert (event["reportingComponent"], event["reportingInstance"]) == (DRIVER, "node1")
    assert event["firstTimestamp"].endswith("Z")


def test_a_kubelet_retrying_makes_one_event_written_again_once_a_minute(clock: Clock) -> None:
    api = EventsApi()
    events = started(api, clock)
    try:
        for _ in range(5):  # the kubelet's retries within a minute: counted, not written
            events.failed(REF, "PrepareFailed", "bad")
            clock.now += 5
        events.wait_idle()
        assert api.calls == [("POST", EVENTS)]
        clock.now += 60
        events.failed(REF, "PrepareFailed", "bad")
        events.wait_idle()
        (event,) = api.events.values()
        assert api.calls[1][0] == "PUT"
        assert api.calls[1][1] == f"{EVENTS}/{event['metadata']['name']}"
        assert event["count"] == 6
        events.failed(REF, "PrepareFailed", "another error")  # another message: its own
        events.failed(REF, "UnprepareFailed", "bad")  # another reason: its own
        events.wait_idle()
    finally:
        events.stop()
    assert len(api.events) == 3
    assert len(api.calls) == 4


def test_a_restarted_agent_writes_its_event_again(clock: Clock) -> None:
    api = EventsApi()
    for _ in range(2):
        events = started(api, clock)
        try:
            events.failed(REF, "PrepareFailed", "bad")
            events.wait_idle()
        finally:
            events.stop()
    assert [c[0] for c in api.calls] == ["POST", "POST", "PUT"]
    assert len(api.events) == 1


def test_a_refused_post_is_logged_and_not_retried_in_a_storm(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    refusal = Forbidden(
        "POST /api/v1/namespaces/team-a/events: 403 Forbidden: events is forbidden: User "
        '"system:serviceaccount:sriovlib:sriovlib-agent" cannot create resource "events"',
        403,
        "Forbidden",
    )
    api = EventsApi(refuse=refusal)
    events = started(api, clock)
    try:
        with caplog.at_level(logging.WARNING, "sriovlib.agent"):
            for _ in range(3):
                events.failed(REF, "PrepareFailed", "bad")
            events.wait_idle()
    finally:
        events.stop()
    assert api.calls == [("POST", EVENTS)]
    (record,) = [r for r in caplog.records if r.getMessage() == "Event not posted"]
    assert record.error == str(refusal)  # type: ignore[attr-defined]


def test_a_malformed_claim_reference_gets_no_event(clock: Clock) -> None:
    api = EventsApi()
    events = started(api, clock)
    try:
        events.failed(ClaimRef("team-a", "net", "../x"), "PrepareFailed", "bad")
        events.wait_idle()
    finally:
        events.stop()
    assert api.calls == []


# -- through the agent -----------------------------------------------------------------------


class AgentApi(MemoryApi):
    """The slices' in-memory API server, with Events."""

    def __init__(self) -> None:
        super().__init__()
        self.event_api = EventsApi()

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if path.endswith("/events"):
            return self.event_api.create(path, body)
        return super().create(path, body)


@pytest.fixture
def kubelet(node: Node) -> Iterator[DraKubeletStandIn]:
    with DraKubeletStandIn(node.tmp / "plugins_registry") as standin:
        yield standin


def test_a_bad_claim_through_the_agent_is_an_event_and_changes_no_vf(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn
) -> None:
    api = AgentApi()
    options = node.options(
        dra=DraOptions(
            registry_dir=node.tmp / "plugins_registry",
            plugins_dir=node.tmp / "plugins",
            cdi_dir=node.tmp / "cdi",
            state_dir=node.tmp / "state",
        )
    )
    agent = Agent(
        node.host,
        parse_config(json.dumps(CONFIG).encode()),
        options,
        claims=claims,
        api=api,  # type: ignore[arg-type]
        node_name="node1",
    )
    agent.start()
    try:
        before = (node.host.vf(NET_VF), node.host.vf_state(NET_VF))
        ref = claims.add(
            resource_claim(
                "bad",
                devices=[("vf", "node1", device_name_of(NET_VF))],
                config=[{"parameters": {"vlan": 100, "trust": "on", "vlanQos": 3}}],
            )
        )
        requests = dict(node.kernel.requests)
        error = kubelet.register().prepare(ref).claims[ref.uid].error
        assert agent.events is not None
        agent.events.wait_idle()
    finally:
        agent.stop()
    assert "unknown key 'vlanQos' (did you mean 'vlanQoS'?)" in error
    ((_, event),) = api.event_api.events.items()
    assert (event["reason"], event["message"]) == ("PrepareFailed", error)
    assert event["involvedObject"]["uid"] == ref.uid
    assert (node.host.vf(NET_VF), node.host.vf_state(NET_VF)) == before
    assert node.kernel.requests.get("set_vf", 0) == requests.get("set_vf", 0)
    assert not (node.tmp / "cdi" / f"sriovlib-{DRIVER}-{ref.uid}.json").exists()
