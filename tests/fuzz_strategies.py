"""Hypothesis strategies for fuzzing MinT's HTTP routes, and the settings every fuzz test runs under:
records drawn from the published schema (what `mint events schema` prints, events/schema.py), OpenAI
bodies and Tinker bodies (mint/tinker/wire.py), each then broken one way. What is broken says which
field the refusal must name: the tests check the server's answer against it. No field means the fault
is in none (the bytes are not JSON), so the refusal names the body or the record as a whole.

Settings: by default a fixed, derandomized run of a bounded number of examples per property (the CI
run); HYPOTHESIS_PROFILE=fuzz draws FUZZ_FACTOR times as many, from a fresh seed each run (give
pytest `-o timeout=0`: such a run outlasts the suite's per-test timeout).
"""

from __future__ import annotations

import datetime
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from events.envelope import Command
from events.names import INT64_MAX, POLICY_PATTERN
from events.schema import BY_NAME, PRODUCER_TYPES, json_schema

Json = Any
Draw = Callable[[st.SearchStrategy[Any]], Any]

FUZZ_PROFILE = "fuzz"
# How many more examples a property draws under HYPOTHESIS_PROFILE=fuzz than in the CI run.
FUZZ_FACTOR = 40


def fuzz_settings(examples: int) -> settings:
    """The settings of one fuzz property: `examples` derandomized examples, or FUZZ_FACTOR times as
    many from a fresh seed under HYPOTHESIS_PROFILE=fuzz. No deadline: the server's answer time on
    a loaded machine is not what is tested. The app and its log live for the whole test, across
    examples (that the server stays up through them is one of the properties), so a function-scoped
    fixture is shared on purpose; a record is large by design."""
    fuzzing = os.environ.get("HYPOTHESIS_PROFILE") == FUZZ_PROFILE
    return settings(
        max_examples=examples * FUZZ_FACTOR if fuzzing else examples,
        derandomize=not fuzzing,
        database=None,
        deadline=None,
        # A failing example is reported as drawn: shrinking one that makes dozens of requests
        # through a running system takes longer than reading it.
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


# -- schema -> strategy ------------------------------------------------------------------------------

SCHEMA = json_schema()
DEFS: dict[str, Json] = SCHEMA["$defs"]
TENANT = "acme"
OTHER_TENANT = "globex"
_POLICY_NAME = POLICY_PATTERN.split("/", 1)[1].rstrip("$")  # the part after `tenant/`
# The types an acme producer may send (not the operator's infrastructure records).
TENANT_TYPES = tuple(sorted(name for name in PRODUCER_TYPES if not BY_NAME[name].SYSTEM))
ENVELOPE = ("type", "id", "key", "tenant", "v")  # set by `valid_record`, not drawn


def _hints(type_name: str) -> dict[str, Any]:
    return typing.get_type_hints(BY_NAME[type_name])


def _is_datetime(hint: Any) -> bool:
    # msgspec publishes a datetime as a plain string; the record decodes only RFC 3339 in it.
    return hint is datetime.datetime or any(_is_datetime(a) for a in typing.get_args(hint))


def from_schema(schema: Json, tenant: str) -> st.SearchStrategy[Json]:
    """JSON values valid under one JSON Schema node of the published schema. Policy names belong to
    `tenant` (the schema says `tenant/name`; the tenancy rule that they share the record's tenant is
    not in it). Arrays hold unique items (a run's policies must be distinct)."""
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(DEFS[schema["$ref"].rsplit("/", 1)[1]], tenant))
    if "anyOf" in schema:
        return st.one_of([from_schema(option, tenant) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        exclude_low, exclude_high = "exclusiveMinimum" in schema, "exclusiveMaximum" in schema
        low = schema["exclusiveMinimum"] if exclude_low else low
        high = schema["exclusiveMaximum"] if exclude_high else high
        return st.floats(
            low,
            high,
            exclude_min=exclude_low,
            exclude_max=exclude_high,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "string":
        pattern = schema.get("pattern")
        if pattern == POLICY_PATTERN:
            return st.from_regex(f"^{_POLICY_NAME}$", fullmatch=True).map(lambda name: f"{tenant}/{name}")
        if pattern:
            return st.from_regex(pattern, fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40))
    if kind == "array":
        items = from_schema(schema.get("items", {"type": "integer"}), tenant)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=3, unique_by=repr)
    if kind == "object":
        if "properties" in schema:
            return _object(schema, tenant)
        values = schema.get("additionalProperties")
        leaf = from_schema(values, tenant) if isinstance(values, dict) else st.integers(0, 9)
        return st.dictionaries(st.text(max_size=8), leaf, max_size=3)
    raise AssertionError(f"no strategy for schema node {schema}")


def _object(schema: Json, tenant: str) -> st.SearchStrategy[dict[str, Json]]:
    """The required properties always, each optional one or not."""
    properties: dict[str, Json] = schema["properties"]
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries(
        {name: from_schema(properties[name], tenant) for name in properties if name in required},
        optional={name: from_schema(properties[name], tenant) for name in properties if name not in required},
    )


@st.composite
def valid_record(draw: Draw, type_name: str | None = None, tenant: str = TENANT) -> dict[str, Json]:
    """The fields of a record a producer of `tenant` may send, drawn from its published schema: the
    envelope filled as `Record.create` fills it (key from the key field, tenant from the key); its
    id is left to the test, which makes every id fresh."""
    name = type_name or draw(st.sampled_from(TENANT_TYPES))
    definition = DEFS[name]
    hints = _hints(name)
    fields: dict[str, Json] = {"type": name}
    for field, schema in definition["properties"].items():
        if field in ENVELOPE or (field not in definition["required"] and not draw(st.booleans())):
            continue
        if _is_datetime(hints[field]):
            moment = draw(st.datetimes(timezones=st.just(datetime.UTC)))
            fields[field] = moment.isoformat()
        else:
            fields[field] = draw(from_schema(schema, tenant))
    # Rules the schema states in words only (events/training.py checks them): a run trains a policy;
    # an export's uri is under its policy's name.
    if fields.get("policies") == []:
        fields["policies"] = [draw(from_schema(definition["properties"]["policies"]["items"], tenant))]
    if name == "RevisionExported":
        fields["uri"] = f"adapters/{fields['policy']}/{fields['revision']}/{fields['uri']}"
    fields["key"] = fields[BY_NAME[name].KEY_FIELD]
    fields["tenant"] = tenant
    return fields


# -- breaking a record -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """One record's bytes, broken as `how` says; a refusal must name `field` (None: the bytes are not
    JSON, so no field can be named) or one of `also` (a fault two checks may catch first)."""

    raw: bytes
    field: str | None
    how: str
    also: tuple[str, ...] = ()

    def named(self, field: str | None) -> bool:
        return field == self.field or field in self.also


def _wrong_type(schema: Json) -> list[Json]:
    """JSON values of another type than `schema` accepts."""
    if "$ref" in schema or schema.get("type") == "object":
        return [7, "x", [1]]
    if "anyOf" in schema:
        kinds = {option.get("type") for option in schema["anyOf"]}
        return [[1]] if "string" in kinds else ["x", [1]]
    if "enum" in schema:
        return [7, "not-one-of-them"]
    return {
        "string": [7, True, [], {}],
        "integer": ["7", 1.5, [], None],
        "number": ["1.0", True, {}],
        "boolean": [1, "true"],
        "array": [{}, "x", 3],
    }.get(schema.get("type"), [object()])


def _out_of_range(schema: Json) -> list[Json]:
    """Values of the right JSON type outside the schema's bounds, pattern or length."""
    values: list[Json] = []
    if "minimum" in schema:
        values.append(schema["minimum"] - 1)
    if "maximum" in schema:
        values.append(schema["maximum"] + 1)
    if "exclusiveMinimum" in schema:
        values.append(schema["exclusiveMinimum"])  # the bound itself is out
    if "exclusiveMaximum" in schema:
        values.append(schema["exclusiveMaximum"])
    if "pattern" in schema:
        values += ["", "-starts-with-a-dash", "UPPER/Case Name", "x" * 300, "a/b\nc"]
    if "maxLength" in schema:
        values.append("i" * (schema["maxLength"] + 1))
    if schema.get("minLength", 0) > 0:
        values.append("")
    return values


PLACEHOLDER = "\u2603-placeholder"  # where a test puts bytes no encoder would write
_PLACED = b'"' + PLACEHOLDER.encode() + b'"'


def _encode(fields: Mapping[str, Json]) -> bytes:
    return msgspec.json.encode(fields)


WAYS = (
    "drop-required",
    "wrong-type",
    "out-of-range",
    "unknown-field",
    "other-tenant",
    "crossing-tenant",
    "bad-id",
    "deep-nesting",
    "too-deep",
    "not-json",
    "invalid-utf8",
    "unknown-type",
    "decider-fact",
    "wrong-route",
    "foreign-uri",
)


@st.composite
def malformed_record(draw: Draw, fields: dict[str, Json], way: str | None = None) -> Malformed:
    """`fields` (a valid record, its id set) broken in `way` (one of WAYS but wrong-route, which
    `bad_record` makes), or in one drawn way."""
    name = fields["type"]
    definition = DEFS[name]
    properties: dict[str, Json] = definition["properties"]
    drawn = [f for f in fields if f != "type"]
    way = way or draw(st.sampled_from(WAYS))
    if way == "drop-required":
        field = draw(st.sampled_from(definition["required"]))
        broken = {k: v for k, v in fields.items() if k != field}
        # Without its key field the record's key check fails on the field it reads first.
        return Malformed(_encode(broken), field, way)
    if way == "wrong-type":
        field = draw(st.sampled_from(drawn))
        value = draw(st.sampled_from(_wrong_type(properties[field]) if field not in ("at",) else [7, "noon"]))
        return Malformed(_encode({**fields, field: value}), field, way, _key_side(name, field))
    if way == "out-of-range":
        bounded = [f for f in drawn if _out_of_range(properties[f])]
        field = draw(st.sampled_from(bounded))
        value = draw(st.sampled_from(_out_of_range(properties[field])))
        return Malformed(_encode({**fields, field: value}), field, way, _key_side(name, field))
    if way == "unknown-field":
        extra = draw(st.from_regex(r"^zz_[a-z]{1,8}$", fullmatch=True))
        return Malformed(_encode({**fields, extra: draw(st.integers())}), extra, way)
    if way == "other-tenant":
        # Consistent in itself, but another tenant's: decodes, and the door refuses it.
        other = {k: _retenant(v) for k, v in fields.items()}
        return Malformed(_encode(other), "tenant", way)
    if way == "crossing-tenant":
        # The envelope says globex, its key and policies name acme's: the record does not decode.
        return Malformed(_encode({**fields, "tenant": OTHER_TENANT}), "key", way, ("tenant",))
    if way == "bad-id":
        value = draw(st.sampled_from(["", "i" * 201, 7, None, ["id"]]))
        return Malformed(_encode({**fields, "id": value}), "id", way)
    if way == "deep-nesting":
        field = draw(st.sampled_from([f for f in drawn if f not in ("key",)]))
        depth = draw(st.integers(2, 60))
        nested: Json = "x"
        for _ in range(depth):
            nested = [nested]
        return Malformed(_encode({**fields, field: nested}), field, way, _key_side(name, field))
    if way == "too-deep":
        # Past any decoder's stack. A typed field sees the wrong type at its first bracket and is
        # named; one that takes any JSON (a run's config) is past reading: the record as a whole.
        field = draw(st.sampled_from(drawn))
        depth = draw(st.integers(1_000, 20_000))  # msgspec gives up near 1,000 levels
        raw = _encode({**fields, field: PLACEHOLDER}).replace(_PLACED, b"[" * depth + b"]" * depth)
        return Malformed(raw, field, way, (None, *_key_side(name, field)))
    if way == "not-json":
        # Cut short: a decoder may first find a value of the wrong type before the cut.
        raw = _encode(fields)
        cut = draw(st.integers(1, len(raw) - 1))
        # No closing brace among them: the record's own object is left open, so never JSON.
        junk = draw(st.sampled_from([b"", b"{", b"\x00", b",", b"NaN", b"]"]))
        return Malformed(raw[:cut] + junk, None, way, tuple(fields))
    if way == "invalid-utf8":
        field = draw(st.sampled_from([f for f in drawn if isinstance(fields[f], str)]))
        raw = _encode({**fields, field: PLACEHOLDER}).replace(_PLACED, b'"\xff\xfe\xc3"')
        return Malformed(raw, None, way, (field, *_key_side(name, field)))
    if way == "unknown-type":
        return Malformed(_encode({**fields, "type": "NoSuchRecord"}), "type", way)
    # A fact only a decider writes, well formed, from a producer.
    forged = (
        {**fields, "type": "PolicyRegistered"} if "policy" in fields else {**fields, "type": "EngineLost"}
    )
    return Malformed(_encode(forged), "type", way)


def _retenant(value: Json) -> Json:
    if isinstance(value, str):
        return (
            OTHER_TENANT + value[len(TENANT) :]
            if value.startswith(f"{TENANT}/") or value == TENANT
            else value
        )
    if isinstance(value, list):
        return [_retenant(v) for v in value]
    return value


def _key_side(type_name: str, field: str) -> tuple[str, ...]:
    """A record's key field is checked twice (its own schema, then the key's equality with it); a
    bad value may be caught by either."""
    return ("key",) if field == BY_NAME[type_name].KEY_FIELD else ()


ROUTES: dict[str, str] = {"command": "/v1/commands", "fact": "/v1/events"}


FOREIGN_URI = f"adapters/{OTHER_TENANT}/theirs/r1/adapter_model.safetensors"


def kind_for(way: str) -> tuple[str, ...]:
    """The routes a record broken in `way` is sent to: an export with a foreign uri is a fact."""
    return ("fact",) if way == "foreign-uri" else ("command", "fact")


def types_of(kind: str) -> list[str]:
    return [name for name in TENANT_TYPES if issubclass(BY_NAME[name], Command) == (kind == "command")]


@st.composite
def bad_record(draw: Draw, kind: str, ident: str, way: str) -> Malformed:
    """A record refused on the route of `kind`, broken in `way`: one of that kind broken, or, for
    wrong-route, a good one of the other kind (whose route it is not)."""
    if way == "foreign-uri":
        # Well formed, but pointing at another policy's artifact: refused on the facts' route.
        fields = {**draw(valid_record("RevisionExported")), "id": ident}
        return Malformed(_encode({**fields, "uri": FOREIGN_URI}), "uri", way)
    if way == "wrong-route":
        other = "fact" if kind == "command" else "command"
        fields = {**draw(valid_record(draw(st.sampled_from(types_of(other))))), "id": ident}
        return Malformed(_encode(fields), "type", "wrong-route")
    fields = {**draw(valid_record(draw(st.sampled_from(types_of(kind))))), "id": ident}
    return draw(malformed_record(fields, way))


FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*")


def top_field(path: str | None) -> str | None:
    """`gate.suite` -> `gate`, `targets[0]` -> `targets`: the record field a nested path is in."""
    if path is None:
        return None
    found = FIELD_PATH.match(path)
    return found.group(0) if found else path


# -- OpenAI bodies -------------------------------------------------------------------------------------

SERVED = ("acme/a", "acme/a@r1", "acme/a@r2")  # what tests/serving_system.py's `ready` publishes
_short_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)


def _sampling() -> dict[str, st.SearchStrategy[Json]]:
    """The optional sampling fields both routes take, within their bounds (max_tokens kept small:
    each good request really generates)."""
    return {
        "max_tokens": st.integers(1, 4),
        "temperature": st.floats(0.0, 2.0),
        "top_p": st.floats(0.0, 1.0, exclude_min=True),
        "stop": st.none() | _short_text.filter(bool) | st.lists(_short_text.filter(bool), max_size=4),
        "seed": st.none() | st.integers(-(2**63), INT64_MAX),
        "stream": st.booleans(),
        "n": st.just(1),
    }


def completion_body() -> st.SearchStrategy[dict[str, Json]]:
    return st.fixed_dictionaries(
        {"model": st.sampled_from(SERVED), "prompt": _short_text},
        optional={**_sampling(), "logprobs": st.none() | st.integers(0, 5)},
    )


def chat_body() -> st.SearchStrategy[dict[str, Json]]:
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": _short_text}
    )
    return st.fixed_dictionaries(
        {"model": st.sampled_from(SERVED), "messages": st.lists(message, min_size=1, max_size=3)},
        optional={**_sampling(), "logprobs": st.booleans()},
    )


@dataclass(frozen=True)
class BadBody:
    """A request body and the refusal it must get: `status`, naming `field` (None: the body is not
    JSON, or not an object, so it names no field) or one of `also`."""

    raw: bytes
    status: int
    field: str | None
    how: str
    also: tuple[str, ...] = ()

    def named(self, field: str | None) -> bool:
        return field == self.field or field in self.also


# Per field, values of the wrong type or outside its bounds, as (value, status): each is a 400 but
# an unknown or foreign model, which is answered exactly like a missing one (404).
OPENAI_BAD_VALUES: dict[str, list[tuple[Json, int]]] = {
    "model": [(7, 400), (None, 400), ("acme/nope", 404), ("globex/a", 404), ("acme/a@r9", 404), ("", 404)],
    "max_tokens": [(0, 400), (-1, 400), (2**63, 400), ("4", 400), (1.5, 400), (100_000, 400)],
    "temperature": [(-0.1, 400), (2.01, 400), ("hot", 400), (None, 400)],
    "top_p": [(0.0, 400), (1.5, 400), ([1], 400)],
    "stop": [(["a", "b", "c", "d", "e"], 400), (7, 400), ([7], 400)],
    "seed": [(2**63, 400), (-(2**63) - 1, 400), ("1", 400)],
    "stream": [("yes", 400), (1, 400), (None, 400)],
    "n": [(2, 400), (0, 400), ("1", 400)],
}
COMPLETION_BAD = {
    **OPENAI_BAD_VALUES,
    "prompt": [(7, 400), (None, 400), (["a"], 400), ("word " * 2000, 400)],
    "logprobs": [(6, 400), (-1, 400), (True, 400)],
}
CHAT_BAD = {
    **OPENAI_BAD_VALUES,
    "messages": [
        ([], 400),
        ("hi", 400),
        ([{"role": "robot", "content": "hi"}], 400),
        ([{"role": "user"}], 400),
        ([{"role": "user", "content": 7}], 400),
        ([{"role": "user", "content": "hi", "name": "x"}], 400),
        ([{"role": "user", "content": "word " * 2000}], 400),
    ],
    "logprobs": [(1, 400), ("true", 400)],
}


@st.composite
def bad_openai_body(draw: Draw, chat: bool) -> BadBody:
    """A valid body of the route broken in one drawn way."""
    body = draw(chat_body() if chat else completion_body())
    bad_values = CHAT_BAD if chat else COMPLETION_BAD
    way = draw(
        st.sampled_from(
            ["bad-value", "drop-required", "unknown-field", "deep-nesting", "not-json", "not-object"]
        )
    )
    if way == "bad-value":
        field = draw(st.sampled_from(sorted(bad_values)))
        value, status = draw(st.sampled_from(bad_values[field]))
        if field == "max_tokens" and value == 100_000:
            body["stream"] = False
        return BadBody(msgspec.json.encode({**body, field: value}), status, field, way)
    if way == "drop-required":
        field = draw(st.sampled_from(["model", "messages" if chat else "prompt"]))
        return BadBody(msgspec.json.encode({k: v for k, v in body.items() if k != field}), 400, field, way)
    if way == "unknown-field":
        extra = draw(st.sampled_from(["frequency_penalty", "tools", "zz_unknown", "best_of", "user"]))
        return BadBody(msgspec.json.encode({**body, extra: 1}), 400, extra, way)
    if way == "deep-nesting":
        field = draw(st.sampled_from(sorted(body)))
        depth = draw(st.sampled_from([2, 50, 5_000]))
        raw = msgspec.json.encode({**body, field: PLACEHOLDER}).replace(_PLACED, b"[" * depth + b"]" * depth)
        return BadBody(raw, 400, field, way)
    if way == "not-json":
        raw = msgspec.json.encode(body)
        cut = draw(st.integers(1, len(raw) - 1))
        # Cut short: a decoder may first find a value out of bounds (a number cut) before the cut.
        junk = draw(st.sampled_from([b"", b"\xff", b",", b"{"]))
        return BadBody(raw[:cut] + junk, 400, None, way, tuple(body))
    return BadBody(draw(st.sampled_from([b"[]", b"7", b'"prompt"', b"null", b""])), 400, None, way)


# -- Tinker bodies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinkerBody:
    """A body for a Tinker route and the names its refusal's field may start with: the places on
    the path to the fault (a batch's own checks name places within the batch, as its protobuf form
    has them); `body` when it is not a JSON object at all."""

    route: str
    raw: bytes
    names: tuple[str, ...]
    how: str

    def over(self, session: str, model: str, sampler: str, seq: int) -> bytes:
        """The body with the live session, model, sampler and next seq_id in place of the stand-ins."""
        raw = self.raw.replace(f'"{SESSION}"'.encode(), msgspec.json.encode(session))
        raw = raw.replace(f'"{MODEL}"'.encode(), msgspec.json.encode(model))
        raw = raw.replace(f'"{SAMPLER}"'.encode(), msgspec.json.encode(sampler))
        return raw.replace(str(SEQ).encode(), str(seq).encode())


# Stand-ins for what only the running server knows; `TinkerBody.over` puts the live ones in.
SESSION, MODEL, SAMPLER, SEQ = "fuzz-session", "fuzz-model", "fuzz-sampler", 987_654_321


def tinker_templates(
    session: str = SESSION, model: str = MODEL, sampler: str = SAMPLER, seq: int = SEQ
) -> dict[str, dict[str, Json]]:
    """A good body per Tinker route, over a live session, model and sampler; `seq` is the model's
    next seq_id."""
    datum = {
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": [5, 6, 7]}]},
        "loss_fn_inputs": {"target_tokens": {"data": [6, 7, 8], "dtype": "int64"}},
    }
    batch = {"data": [datum], "loss_fn": "cross_entropy"}
    return {
        "/create_session": {"tags": ["fuzz"], "user_metadata": {"k": "v"}, "sdk_version": "0"},
        "/create_model": {"session_id": session, "base_model": "tiny", "lora_config": {"rank": 4}},
        "/get_info": {"model_id": model},
        "/forward_backward": {"model_id": model, "seq_id": seq, "forward_backward_input": batch},
        "/forward": {"model_id": model, "seq_id": seq, "forward_input": batch},
        "/optim_step": {"model_id": model, "seq_id": seq, "adam_params": {"learning_rate": 1e-4}},
        "/save_weights": {"model_id": model, "seq_id": seq, "path": "fuzz", "overwrite": False},
        "/save_weights_for_sampler": {"model_id": model, "seq_id": seq, "path": "fuzz-sampler"},
        "/create_sampling_session": {"session_id": session, "base_model": "tiny"},
        "/asample": {
            "sampling_session_id": sampler,
            "prompt": {"chunks": [{"tokens": [1, 2, 3]}]},
            "sampling_params": {"max_tokens": 2, "temperature": 1.0},
            "num_samples": 1,
        },
        "/retrieve_future": {"request_id": "req-none"},
        "/weights_info": {"tinker_path": "tinker://x/weights/y"},
    }


# Values each route refuses in a field of the right JSON type (path, value): out of range, past
# int64, not a finite float32, a token outside int32.
TINKER_OUT_OF_RANGE: dict[str, list[tuple[str, Json]]] = {
    "/create_model": [("lora_config.rank", 10**30), ("lora_config.seed", 2**64), ("model_seq_id", -1)],
    "/forward_backward": [
        ("seq_id", 0),
        ("seq_id", 2**63),
        ("forward_backward_input.loss_fn", "no-such-loss"),
        ("forward_backward_input.data", []),
        ("forward_backward_input.data.0.model_input.chunks.0.tokens.1", -1),
        ("forward_backward_input.data.0.model_input.chunks.0.tokens.1", 2**40),
        ("forward_backward_input.data.0.loss_fn_inputs.target_tokens.data.0", 1e20),
    ],
    "/optim_step": [
        ("adam_params.beta1", 1.0),
        ("adam_params.eps", -1.0),
        ("adam_params.learning_rate", -0.5),
        ("seq_id", -3),
    ],
    "/asample": [
        ("num_samples", 10**30),
        ("sampling_params.max_tokens", 10**30),
        ("sampling_params.seed", 2**64),
        ("prompt.chunks.0.tokens.0", 2**40),
    ],
    "/weights_info": [("tinker_path", "tinker://../weights/x"), ("tinker_path", "tinker://a/b/c/d")],
    "/save_weights": [("seq_id", 0)],
}


def _wrong_json_type(value: Json) -> Json:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return "7"
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"a": 1}
    return [1]


def _paths(value: Json, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every place in a JSON value (object members and array items), outermost first."""
    places: list[tuple[str, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            places += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            places += _paths(inner, (*prefix, str(index)))
    return places


def _set(value: Json, path: tuple[str, ...], new: Json) -> Json:
    """`value` with the place at `path` replaced by `new` (None: removed)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        items = list(value)
        items[int(head)] = _set(items[int(head)], rest, new)
        return items
    if not rest:  # a member of the object, there or not yet
        return {k: v for k, v in value.items() if k != head} if new is None else {**value, head: new}
    return {**value, head: _set(value[head], rest, new)}


def _get(value: Json, path: tuple[str, ...]) -> Json:
    for step in path:
        value = value[int(step)] if isinstance(value, list) else value[step]
    return value


# The members each route's body must have (mint/tinker/wire.py), and those that take any JSON.
TINKER_REQUIRED: dict[str, tuple[str, ...]] = {
    "/create_model": ("session_id", "base_model"),
    "/get_info": ("model_id",),
    "/forward_backward": ("model_id", "seq_id", "forward_backward_input"),
    "/forward": ("model_id", "seq_id", "forward_input"),
    "/optim_step": ("model_id", "seq_id", "adam_params"),
    "/save_weights": ("model_id", "seq_id"),
    "/save_weights_for_sampler": ("model_id", "seq_id"),
    "/create_sampling_session": ("session_id",),
    "/asample": ("sampling_session_id", "prompt", "sampling_params"),
    "/retrieve_future": ("request_id",),
    "/weights_info": ("tinker_path",),
}
_UNTYPED = ("user_metadata",)


@st.composite
def bad_tinker_body(draw: Draw) -> TinkerBody:
    """A good body of a drawn route broken in one drawn way."""
    templates = tinker_templates()
    route = draw(st.sampled_from(sorted(templates)))
    body = templates[route]
    ways = ["wrong-type", "deep-nesting", "not-json", "not-object"]
    ways += ["drop-required"] if route in TINKER_REQUIRED else []
    ways += ["out-of-range"] if route in TINKER_OUT_OF_RANGE else []
    way = draw(st.sampled_from(ways))
    if way == "drop-required":
        field = draw(st.sampled_from(TINKER_REQUIRED[route]))
        return TinkerBody(route, msgspec.json.encode(_set(body, (field,), None)), (field,), way)
    if way == "wrong-type":
        path = draw(st.sampled_from([p for p in _paths(body) if p[0] not in _UNTYPED]))
        broken = _set(body, path, _wrong_json_type(_get(body, path)))
        return TinkerBody(route, msgspec.json.encode(broken), path, way)
    if way == "out-of-range":
        dotted, value = draw(st.sampled_from(TINKER_OUT_OF_RANGE[route]))
        path = tuple(dotted.split("."))
        return TinkerBody(route, msgspec.json.encode(_set(body, path, value)), path, way)
    if way == "deep-nesting":
        field = draw(st.sampled_from(sorted(body)))
        depth = draw(st.sampled_from([3, 70, 5_000, 100_000]))
        raw = msgspec.json.encode({**body, field: PLACEHOLDER}).replace(_PLACED, b"[" * depth + b"]" * depth)
        return TinkerBody(route, raw, (field,), way)
    if way == "not-json":
        raw = msgspec.json.encode(body)
        cut = draw(st.integers(1, len(raw) - 1))
        # Cut short: a decoder may first find a value of the wrong type or out of bounds (a number
        # cut) before the cut.
        junk = draw(st.sampled_from([b"", b"\xff", b",", b"{"]))
        return TinkerBody(route, raw[:cut] + junk, ("body", *sorted({p[0] for p in _paths(body)})), way)
    return TinkerBody(route, draw(st.sampled_from([b"[]", b"7", b'"x"', b"null"])), ("body",), way)
