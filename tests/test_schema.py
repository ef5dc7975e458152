"""The vocabulary: upcasting stored old versions, validation errors that name the field, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from events import codec
from events.catalog import CanaryStarted, PolicyRegistered, Promote
from events.codec import RecordError, UnknownRecord
from events.schema import BY_NAME, CURRENT_VERSION, json_schema
from events.serving import EngineRegistered, PairedScores, TrafficObserved
from events.training import StartTraining, StepCompleted
from tests.records import forged

V1_BYTES = (Path(__file__).parent / "data" / "policy_registered_v1.json").read_bytes().strip()


def test_v1_bytes_decode_through_their_v2_successor() -> None:
    record = codec.decode(V1_BYTES)
    assert isinstance(record, PolicyRegistered)
    assert record.v == 2 == CURRENT_VERSION["PolicyRegistered"]
    assert (record.policy, record.base_id, record.promotion) == ("acme/legacy", "smollm2-135m", "manual")
    assert record.source == "prototype"


def test_the_log_header_fast_path_upcasts_too() -> None:
    record = codec.decode(V1_BYTES, "PolicyRegistered", 1)
    assert isinstance(record, PolicyRegistered) and record.base_id == "smollm2-135m"


# What the build before paired shadow scoring wrote: traffic counters without paired scores.
TRAFFIC_V1 = (
    b'{"type":"TrafficObserved","v":1,"id":"t1","key":"e1","tenant":"_system","at":"2026-12-01T10:00:00Z",'
    b'"source":"engine-e1","engine":"e1","interval_start":"2026-12-01T09:59:59Z","interval_s":1.0,'
    b'"traffic":{"acme/a@r2":{"requests":9,"errors":1,"scored":2,"score_sum":1.5}}}'
)
CANARY_V1 = (
    b'{"type":"CanaryStarted","v":1,"id":"c1","key":"acme/a","tenant":"acme","at":"2026-12-01T10:00:00Z",'
    b'"source":"catalog","policy":"acme/a","canary":"c1","revision":"r2","stable":"r1",'
    b'"rules":{"mode":"shadow"},"window_start":{"r1":{"requests":40}}}'
)


def test_traffic_and_canary_starts_of_v1_are_read_without_paired_scores() -> None:
    for raw, header_path in ((TRAFFIC_V1, False), (TRAFFIC_V1, True)):
        traffic = codec.decode(raw, "TrafficObserved", 1) if header_path else codec.decode(raw)
        assert isinstance(traffic, TrafficObserved) and traffic.v == 3 == CURRENT_VERSION["TrafficObserved"]
        seen = traffic.traffic["acme/a@r2"]
        assert (seen.requests, seen.errors, seen.scored, seen.score_sum, seen.paired) == (9, 1, 2, 1.5, {})
        assert traffic.canaries == {}  # an old engine host tagged nothing: no canary's evidence
    started = codec.decode(CANARY_V1)
    assert isinstance(started, CanaryStarted) and started.v == 3 == CURRENT_VERSION["CanaryStarted"]
    assert (started.canary, started.revision, started.stable) == ("c1", "r2", "r1")
    assert "window_start" not in msgspec.structs.asdict(started)  # v3 dropped the counters' snapshot
    # The current version round-trips its pairs.
    paired = msgspec.structs.replace(
        traffic,
        traffic={"acme/a@r2": msgspec.structs.replace(seen, paired={"r1": PairedScores(pairs=3, wins=1)})},
        canaries={"c1": {"acme/a@r2": seen}},
    )
    again = codec.decode(codec.encode(paired))
    assert isinstance(again, TrafficObserved) and again.traffic["acme/a@r2"].paired["r1"].pairs == 3
    assert again.canaries["c1"]["acme/a@r2"].requests == 9


def test_a_version_newer_than_this_build_is_refused_by_name() -> None:
    newer = V1_BYTES.replace(b'"v":1', b'"v":9')
    with pytest.raises(
        RecordError, match=r"PolicyRegistered\): v: version 9 .* newer than this build knows \(2\)"
    ):
        codec.decode(newer)


def test_errors_name_the_record_and_the_field() -> None:
    promote = Promote.create(policy="acme/a", revision="r1")
    bad = codec.encode(promote).replace(b'"revision":"r1"', b'"revision":7')
    with pytest.raises(RecordError) as info:
        codec.validate(bad)
    assert f"record {promote.id!r} (Promote)" in str(info.value)
    assert "$.revision" in str(info.value)


def test_the_key_must_equal_the_key_field() -> None:
    raw = codec.encode(Promote.create(policy="acme/a", revision="r1")).replace(
        b'"key":"acme/a"', b'"key":"acme/b"'
    )
    with pytest.raises(RecordError, match="key: must equal policy 'acme/a', got 'acme/b'"):
        codec.validate(raw)


def test_policy_names_are_checked() -> None:
    raw = codec.encode(Promote.create(policy="acme/a", revision="r1")).replace(b"acme/a", b"ACME a")
    with pytest.raises(RecordError, match=r"\$\.policy"):
        codec.validate(raw)


def test_unknown_types_are_kept_by_decode_and_refused_by_validate() -> None:
    raw = b'{"type":"Telemetry","v":1,"id":"t1","key":"x"}'
    decoded = codec.decode(raw)
    assert isinstance(decoded, UnknownRecord) and decoded.id == "t1"
    with pytest.raises(RecordError, match="type: unknown record type 'Telemetry'"):
        codec.validate(raw)


def test_every_record_round_trips_and_is_published() -> None:
    schema = json_schema()
    assert set(schema["$defs"]) >= set(BY_NAME)
    for name in BY_NAME:
        assert f"v{CURRENT_VERSION[name]}" in schema["$defs"][name]["description"]
    json.dumps(schema)  # it is plain JSON


def test_every_name_in_a_record_belongs_to_its_tenant() -> None:
    """Tenancy is schema: a record crossing tenants does not decode, whoever wrote it."""
    run = StartTraining.create(
        run="globex/r", policies=["globex/p"], base_id="tiny", algo="sft", task="sft-repeat:x", steps=1
    )
    for changes, field in [
        ({"policies": ["globex/p", "acme/support"]}, "policies"),
        ({"tenant": "acme"}, "key"),
        ({"policies": ["globex/p", "globex/p"]}, "policies"),
    ]:
        with pytest.raises(RecordError) as refused:
            codec.validate(forged(run, **changes))
        assert refused.value.field == field, refused.value
    step = StepCompleted.create(run="globex/r", policy="globex/p1", step=1, loss=0.1)
    with pytest.raises(RecordError, match="run: 'acme/r' belongs to another tenant than 'globex'"):
        codec.validate(forged(step, run="acme/r"))
    engine = EngineRegistered.create(engine="e1", base_id="tiny", kind="torch", gpu_slots=1, cpu_slots=0)
    with pytest.raises(RecordError, match="tenant: EngineRegistered belongs to '_system'"):
        codec.validate(forged(engine, tenant="acme"))


def test_integers_are_bounded_and_unknown_fields_refused() -> None:
    run = StartTraining.create(
        run="acme/r", policies=["acme/p"], base_id="tiny", algo="sft", task="sft-repeat:x", steps=1
    )
    for changes, field in [
        ({"steps": 10**30}, "steps"),
        ({"steps": 0}, "steps"),
        ({"surprise": 1}, "surprise"),
    ]:
        with pytest.raises(RecordError) as refused:
            codec.validate(forged(run, **changes))
        assert refused.value.field == field, refused.value
    nested = b'"config":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(RecordError, match="nested too deeply"):
        codec.validate(codec.encode(run).replace(b'"config":{}', nested))
