"""`mint policy …`: the catalog commands a person gives — register, configure, evaluate, promote,
roll back, retire — each appended to the log, then answered with the fact or the refusal it caused and
that outcome's log position, which the CLI remembers so that its later reads wait for it
(mint/commands/positions.py).

On SQLite, like `mint train`, a command is a client of a running `mint up` on the same home, or starts
the actors in this process until its answer arrives. On Kafka it is only a client: the cluster decides.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import click
import msgspec

from events.catalog import (
    AbortCanary,
    CanaryRules,
    ConfigurePolicy,
    Gate,
    Promote,
    PromoteCanary,
    RegisterPolicy,
    RetirePolicy,
    Rollback,
    StartCanary,
    Watch,
)
from events.codec import RecordError, checked
from events.envelope import Command, Record
from events.evaluation import RequestEvaluation
from events.log import EventLog, Outcome, outcome
from events.names import ModelRefError, parse_model_ref
from events.positions import format_position
from mint.api.positions import Checkpoint
from mint.commands.common import artifacts_option, artifacts_spec, context, home_option, log_option, run
from mint.commands.positions import DEFAULT_WAIT_S, remember
from mint.commands.train import actors_unless_running
from mint.config import ArtifactSpec, LogSpec, open_log
from mint.home import Home

SOURCE = "cli"


def _say(fact: Record) -> tuple[bool, str]:
    fields = {k: v for k, v in msgspec.structs.asdict(fact).items() if v not in (None, "", {}, [])}
    kind = type(fact).__name__
    if kind == "CommandRejected":
        return False, f"refused: {fields['reason']}" + (
            f" (field {fields['field']})" if "field" in fields else ""
        )
    shown = {
        k: v
        for k, v in fields.items()
        if k not in ("id", "v", "key", "tenant", "at", "source", "causation", "correlation", "epoch")
    }
    return True, f"{kind}: " + ", ".join(f"{k}={v}" for k, v in shown.items())


def _submit(
    command: Command,
    *,
    home_dir: str | None,
    log_url: str | None,
    artifacts_url: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    _checked(command)
    home, spec = context(home_dir, log_url)
    artifacts = artifacts_spec(home, artifacts_url)

    async def go() -> Outcome:
        async with open_log(spec) as log, _deciders(home, spec, log, artifacts):
            (appended,) = await log.append([command])
            decided = await outcome(log, appended, command.id, timeout_s)
            if spec.kind == "sqlite":
                # The home's projector (run here, or by its `mint up`) folds the decision soon: let it,
                # so that the next read of this home needs no wait (nor fails for want of a projector).
                await Checkpoint(home.catalog).reached(decided.position, DEFAULT_WAIT_S)
            return decided

    try:
        decided = run(go)
    except TimeoutError:
        raise click.ClickException(
            f"no answer to {type(command).__name__} {command.id} within {timeout_s:g}s; it is on the log "
            "and will be decided when the actors run"
        ) from None
    remember(spec, decided.position)
    ok, said = _say(decided.fact)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": ok,
                    "outcome": type(decided.fact).__name__,
                    "fact": msgspec.to_builtins(decided.fact),
                    "position": format_position(decided.position),
                }
            )
        )
    else:
        click.echo(said)
        click.echo(f"position: {format_position(decided.position)}")
    if not ok:
        raise SystemExit(1)


def _deciders(
    home: Home, spec: LogSpec, log: EventLog, artifacts: ArtifactSpec
) -> AbstractAsyncContextManager[None]:
    """Who decides the command. On Kafka, the cluster's actors (`mint actor`, `mint up --only`): actors
    started here would be one more owner of every partition, deciding what the cluster's owners decide.
    On SQLite, a `mint up` running on the home, or the actors run here until the answer arrives."""
    if spec.kind == "kafka":
        return contextlib.nullcontext()
    return actors_unless_running(home, log, artifacts)


def _build(kind: type[Command], param: str, **fields: Any) -> Command:
    """The command, checked against the published schema as any producer's record would be."""
    try:
        return kind.create(source=SOURCE, **fields)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


def _checked(command: Command) -> Command:
    try:
        checked(command)
    except RecordError as exc:
        raise click.BadParameter(exc.message, param_hint=exc.field or "") from None
    return command


def _ref(value: str) -> tuple[str, str]:
    try:
        policy, revision = parse_model_ref(value)
    except ModelRefError as exc:
        raise click.BadParameter(str(exc), param_hint="REF") from None
    if revision is None:
        raise click.BadParameter(f"{value!r}: name a revision, tenant/name@rev", param_hint="REF")
    return policy, revision


def _gate(suite: str | None, tolerance: float, min_score: float | None) -> Gate | None:
    if suite is None:
        return None
    try:
        return msgspec.convert({"suite": suite, "tolerance": tolerance, "min_score": min_score}, Gate)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--gate/--tolerance") from None


def _watch(enabled: bool, values: dict[str, Any]) -> Watch | None:
    if not enabled:
        return None
    try:
        return msgspec.convert({k: v for k, v in values.items() if v is not None}, Watch)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--watch options") from None


WATCH_OPTIONS = ("max_error_rate", "min_requests", "sample_rate", "max_score_drop")


def _rules(options: dict[str, Any]) -> dict[str, Any]:
    """The gate and the watch, taken out of a command's options (what is left says where to send it)."""
    gate = _gate(options.pop("suite"), options.pop("tolerance"), options.pop("min_score"))
    watch = _watch(options.pop("watch"), {k: options.pop(k) for k in WATCH_OPTIONS})
    return {"gate": gate, "watch": watch}


def common(fn: Callable[..., None]) -> Callable[..., None]:
    for option in (
        click.option(
            "--timeout", "timeout_s", default=600.0, show_default=True, help="Seconds to wait for the answer."
        ),
        click.option(
            "--json", "as_json", is_flag=True, help="Print the outcome as JSON: ok, outcome, fact, position."
        ),
        artifacts_option,
        log_option,
        home_option,
    ):
        fn = option(fn)
    return fn


def gate_and_watch(fn: Callable[..., None]) -> Callable[..., None]:
    for option in (
        click.option(
            "--gate",
            "suite",
            default=None,
            help="The suite revisions must pass: reward:SPEC or a file suite.",
        ),
        click.option(
            "--tolerance",
            default=0.0,
            show_default=True,
            help="How much worse than what serves a revision may score.",
        ),
        click.option("--min-score", type=float, default=None, help="A score every revision must reach."),
        click.option("--watch/--no-watch", "watch", default=False, help="Roll back on live regressions."),
        click.option(
            "--max-error-rate",
            type=float,
            default=None,
            help="Watch: error rate that triggers a rollback (0.05).",
        ),
        click.option(
            "--min-requests",
            type=int,
            default=None,
            help="Watch: requests before the error rate counts (20).",
        ),
        click.option(
            "--sample-rate", type=float, default=None, help="Watch: share of requests scored live (0.25)."
        ),
        click.option(
            "--max-score-drop",
            type=float,
            default=None,
            help="Watch: live score drop below the evaluation (0.15).",
        ),
    ):
        fn = option(fn)
    return fn


CANARY_OPTIONS = ("fraction", "min_requests", "max_duration_s", "max_score_drop", "max_error_rate")


def canary_rule_options(prefix: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The canary rules as options: `--fraction …` on `mint policy canary`, `--canary-fraction …` on
    register/configure (whose `--max-error-rate` and friends are the watch's). Each lands under the
    rule's name with the prefix in front (`fraction` or `canary_fraction`, …, and `shadow`)."""
    name = prefix.replace("-", "_")

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        for flag, dest, kind, help_text in (
            ("fraction", "fraction", float, "Share of requests the candidate answers (0.1)."),
            ("min-requests", "min_requests", int, "Candidate requests before a verdict (50)."),
            (
                "max-duration",
                "max_duration_s",
                float,
                "Seconds before an undecided canary is aborted (3600).",
            ),
            ("max-score-drop", "max_score_drop", float, "Live score below stable allowed (0.1)."),
            ("max-error-rate", "max_error_rate", float, "Live error rate allowed (0.05)."),
        ):
            option = click.option(f"--{prefix}{flag}", name + dest, type=kind, default=None, help=help_text)
            fn = option(fn)
        shadow_help = "Answer from the stable revision; run the share on the candidate unseen."
        return click.option(f"--{prefix}shadow", f"{name}shadow", is_flag=True, help=shadow_help)(fn)

    return decorate


def _canary_rules(shadow: bool, values: dict[str, Any], prefix: str = "") -> CanaryRules | None:
    given = {k: v for k, v in values.items() if v is not None}
    if not given and not shadow:
        return None  # the policy's canary rules, or the defaults
    try:
        return msgspec.convert({**given, "mode": "shadow" if shadow else "canary"}, CanaryRules)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(
            str(exc), param_hint=f"--{prefix}fraction/--{prefix}min-requests/..."
        ) from None


def _canary_rules_of(options: dict[str, Any]) -> CanaryRules | None:
    """register/configure: the `--canary-…` rules taken out of the command's options."""
    shadow = options.pop("canary_shadow")
    rules = {k: options.pop(f"canary_{k}") for k in CANARY_OPTIONS}
    return _canary_rules(shadow, rules, prefix="canary-")


@click.group("policy")
def policy_group() -> None:
    """Register policies, set their gates, evaluate, promote and roll back revisions."""


@policy_group.command("register")
@click.argument("policy")
@click.option("--base", "base_id", required=True, help="The base id the policy's revisions adapt.")
@click.option(
    "--promotion", type=click.Choice(["manual", "auto", "canary"]), default="manual", show_default=True
)
@gate_and_watch
@canary_rule_options("canary-")
@common
def register(policy: str, base_id: str, promotion: str, **options: Any) -> None:
    """Register POLICY (tenant/name) on a base. With `--promotion canary`, a passed gate starts a canary
    with the `--canary-…` rules (the defaults where left out)."""
    rules = _rules(options)
    canary = _canary_rules_of(options)
    command = _build(
        RegisterPolicy,
        "POLICY",
        policy=policy,
        base_id=base_id,
        promotion=promotion,
        canary=canary,
        **rules,
    )
    _submit(command, **options)


@policy_group.command("configure")
@click.argument("policy")
@click.option("--promotion", type=click.Choice(["manual", "auto", "canary"]), default=None)
@gate_and_watch
@canary_rule_options("canary-")
@common
def configure(policy: str, promotion: str | None, **options: Any) -> None:
    """Change POLICY's promotion mode, gate, watch or canary rules (what is not given stays)."""
    rules = _rules(options)
    canary = _canary_rules_of(options)
    command = _build(ConfigurePolicy, "POLICY", policy=policy, promotion=promotion, canary=canary, **rules)
    _submit(command, **options)


@policy_group.command("evaluate")
@click.argument("ref")
@click.option("--suite", default=None, help="Default: the suite of the policy's gate.")
@common
def evaluate(ref: str, suite: str | None, **options: Any) -> None:
    """Evaluate REF (tenant/name@rev) against what the policy serves (or the base model)."""
    policy, revision = _ref(ref)
    _submit(_build(RequestEvaluation, "--suite", policy=policy, revision=revision, suite=suite), **options)


@policy_group.command("promote")
@click.argument("ref")
@click.option("--reason", default="", help="Why, for the serving history.")
@common
def promote(ref: str, reason: str, **options: Any) -> None:
    """Serve REF (tenant/name@rev); refused unless its evaluation passed."""
    policy, revision = _ref(ref)
    _submit(_build(Promote, "REF", policy=policy, revision=revision, reason=reason), **options)


@policy_group.command("rollback")
@click.argument("policy")
@click.option("--to", "to_revision", default=None, help="An earlier served revision (default: the last).")
@click.option("--reason", default="", help="Why, for the serving history.")
@common
def rollback(policy: str, to_revision: str | None, reason: str, **options: Any) -> None:
    """Return POLICY to the revision it served before (or --to an earlier one)."""
    _submit(_build(Rollback, "POLICY", policy=policy, to_revision=to_revision, reason=reason), **options)


@policy_group.command("retire")
@click.argument("policy")
@click.option("--reason", default="")
@common
def retire(policy: str, reason: str, **options: Any) -> None:
    """Stop serving POLICY for good; its name stays taken."""
    _submit(_build(RetirePolicy, "POLICY", policy=policy, reason=reason), **options)


@policy_group.command("canary")
@click.argument("ref")
@canary_rule_options("")
@click.option("--reason", default="", help="Why, for the history.")
@common
def canary(ref: str, shadow: bool, reason: str, **options: Any) -> None:
    """Put REF (tenant/name@rev) in front of a share of POLICY's live traffic; the evaluator promotes or
    aborts it on the evidence. Options left out come from the policy's canary rules or the defaults."""
    policy, revision = _ref(ref)
    rules = _canary_rules(shadow, {k: options.pop(k) for k in CANARY_OPTIONS})
    command = _build(StartCanary, "REF", policy=policy, revision=revision, rules=rules, reason=reason)
    _submit(command, **options)


@policy_group.command("canary-abort")
@click.argument("policy")
@click.option("--reason", default="by hand", show_default=True)
@common
def canary_abort(policy: str, reason: str, **options: Any) -> None:
    """Stop POLICY's running canary: every request goes to the serving pointer again."""
    _submit(_build(AbortCanary, "POLICY", policy=policy, reason=reason), **options)


@policy_group.command("canary-promote")
@click.argument("policy")
@click.option("--reason", default="by hand", show_default=True)
@common
def canary_promote(policy: str, reason: str, **options: Any) -> None:
    """Serve POLICY's running canary to everyone now, without waiting for its verdict."""
    _submit(_build(PromoteCanary, "POLICY", policy=policy, reason=reason), **options)
