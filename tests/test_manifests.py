"""The Kubernetes manifests and the Dockerfile say only what exists: every `mint` command line in them
parses with the real CLI, every actor runs, every ConfigMap and Secret key they read is defined, every
probe asks /healthz on the port the actor serves, and the images are the ones the Dockerfile builds."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from mint.cli import cli

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
# Applied by `kubectl apply -f deploy/kubernetes/` (*.yaml), plus the secrets an operator fills in.
FILES = [*sorted(MANIFESTS.glob("*.yaml")), MANIFESTS / "secrets.yaml.example"]
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}
# Actors whose replica id must be stable (static group membership, a home on its own volume).
STATEFUL = {"catalog", "projector", "trainer", "evaluator", "scheduler", "engine-host"}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
K8S_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Doc = dict[str, Any]


def documents() -> list[tuple[str, Doc]]:
    found = []
    for path in FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.name, doc))
    return found


DOCS = documents()


def defined(kind: str) -> dict[str, dict[str, str]]:
    """ConfigMaps or Secrets by name: their keys and values."""
    return {
        doc["metadata"]["name"]: {**doc.get("data", {}), **doc.get("stringData", {})}
        for _, doc in DOCS
        if doc["kind"] == kind
    }


CONFIG_MAPS, SECRETS = defined("ConfigMap"), defined("Secret")


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def workloads() -> Iterator[Doc]:
    return (doc for _, doc in DOCS if doc["kind"] in WORKLOADS)


def containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def actors() -> Iterator[tuple[Doc, Doc, list[str]]]:
    """(workload, container, argv after `mint actor`) of every container that runs an actor."""
    for doc in workloads():
        for container in containers(doc):
            argv = mint_argv(container)
            if argv[:1] == ["actor"]:
                yield doc, container, argv[1:]


def mint_argv(container: Doc) -> list[str]:
    """The arguments of `mint` the container runs (the image's entrypoint), or [] for another command."""
    command = container.get("command")
    if command is None:
        return list(container.get("args", []))
    return [*command[1:], *container.get("args", [])] if command[0] == "mint" else []


def environment(doc: Doc, container: Doc) -> dict[str, str]:
    """The container's variables as Kubernetes sets them (a pod name stands in for metadata.name)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(CONFIG_MAPS[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(SECRETS[source["secretRef"]["name"]])
    pod_name = f"{doc['metadata']['name']}-0"
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name", variable
            env[variable["name"]] = pod_name
        elif "configMapKeyRef" in ref:
            env[variable["name"]] = CONFIG_MAPS[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        else:
            env[variable["name"]] = SECRETS[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
    return env


def expanded(argv: list[str], env: dict[str, str]) -> list[str]:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in env, f"$({name}) is not defined in the container's environment"
        return env[name]

    return [K8S_VARIABLE.sub(value, arg) for arg in argv]


def parsed(argv: list[str]) -> click.Context:
    """Parse `mint ARGV` as the real CLI does, down to the command that would run (which does not run)."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="mint")
    name, rest = "mint", list(argv)
    while isinstance(command, click.Group):
        name, *rest = rest
        found = command.get_command(ctx, name)
        assert found is not None, f"`{ctx.command_path}` has no command {name!r}"
        command = found
        if isinstance(command, click.Group):
            ctx = click.Context(command, info_name=name, parent=ctx)
    return command.make_context(name, rest, parent=ctx)


def test_every_document_is_named_once() -> None:
    assert DOCS
    seen = set()
    for file, doc in DOCS:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), file
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{file}: {key} twice"
        seen.add(key)


def test_every_mint_command_line_parses_with_the_real_cli() -> None:
    lines = 0
    for doc in workloads():
        for container in containers(doc):
            argv = mint_argv(container)
            if not argv:
                continue
            lines += 1
            try:
                parsed(expanded(argv, environment(doc, container)))
            except click.ClickException as exc:
                pytest.fail(f"{doc['metadata']['name']}/{container['name']}: mint {' '.join(argv)}: {exc}")
    assert lines >= 8


def test_every_actor_runs_with_a_stable_replica_id_where_it_needs_one() -> None:
    (name,) = [p for p in cli.commands["actor"].params if p.name == "name"]
    assert isinstance(name.type, click.Choice)
    running = {}
    for doc, container, argv in actors():
        ctx = parsed(["actor", *expanded(argv, environment(doc, container))])
        role = ctx.params["name"]
        running[role] = doc
        if role in STATEFUL:
            assert doc["kind"] == "StatefulSet", role
            pod = f"{doc['metadata']['name']}-0"
            assert ctx.params["replica"] == pod, f"{role}: --replica is not the pod's name"
        assert doc["spec"]["replicas"] >= 1
    assert set(running) == set(name.type.choices)
    assert running["api"]["kind"] == "Deployment"


def test_every_config_map_and_secret_key_read_is_defined() -> None:
    for doc in workloads():
        spec = pod_spec(doc)
        for container in containers(doc):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source["secretRef"]
                assert ref["name"] in (CONFIG_MAPS if "configMapRef" in source else SECRETS), ref
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                for kind, maps in (("configMapKeyRef", CONFIG_MAPS), ("secretKeyRef", SECRETS)):
                    if kind in ref:
                        keys = maps.get(ref[kind]["name"], {})
                        assert ref[kind]["key"] in keys, (doc["metadata"]["name"], ref)
        for volume in spec.get("volumes", []):
            for kind, maps, field in (("secret", SECRETS, "secretName"), ("configMap", CONFIG_MAPS, "name")):
                if kind in volume:
                    keys = maps[volume[kind][field]]
                    assert all(item["key"] in keys for item in volume[kind].get("items", [])), volume


def test_every_volume_is_there() -> None:
    claims = {doc["metadata"]["name"] for _, doc in DOCS if doc["kind"] == "PersistentVolumeClaim"}
    for doc in workloads():
        spec = pod_spec(doc)
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
        for container in containers(doc):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (doc["metadata"]["name"], container["name"], mount)


def test_every_actor_is_probed_on_healthz_at_the_port_it_serves() -> None:
    for doc, container, argv in actors():
        port = parsed(["actor", *expanded(argv, environment(doc, container))]).params["port"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["path"] == "/healthz", (doc["metadata"]["name"], probe)
            assert ports.get(get["port"], get["port"]) == port, (doc["metadata"]["name"], probe)
    for doc in workloads():
        for container in containers(doc):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["path"] == "/healthz", (doc["metadata"]["name"], probe)


def test_engine_hosts_ask_for_a_gpu_on_gpu_nodes() -> None:
    (doc,) = [d for d, _, argv in actors() if argv[0] == "engine-host"]
    spec = pod_spec(doc)
    (engine,) = spec["containers"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert spec["nodeSelector"]
    assert engine["image"] == f"mint:{VERSION}-cuda"


def test_every_service_reaches_a_container_port_of_a_workload() -> None:
    for _, service in DOCS:
        if service["kind"] != "Service":
            continue
        selector = service["spec"]["selector"].items()
        chosen = [d for d in workloads() if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert chosen, f"service {service['metadata']['name']} selects no workload"
        names = {p["name"] for d in chosen for c in pod_spec(d)["containers"] for p in c.get("ports", [])}
        assert all(p["targetPort"] in names for p in service["spec"]["ports"]), service["metadata"]["name"]
    api = [d for _, d in DOCS if d["kind"] == "Service" and d["metadata"]["name"] == "mint-api"]
    assert api and "clusterIP" not in api[0]["spec"]


def test_the_images_are_the_dockerfiles() -> None:
    for doc in workloads():
        for container in containers(doc):
            assert container["image"] in (f"mint:{VERSION}", f"mint:{VERSION}-cuda"), container["name"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert json.loads(entrypoint) == ["mint"]
    for sources in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in sources.split():
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for installed in re.findall(r"pip install '\.\[([a-z0-9,]+)\]'", dockerfile):
        assert set(installed.split(",")) <= set(extras), installed
    assert f"docker build -t mint:{VERSION} ." in dockerfile
    assert f"docker build -t mint:{VERSION}-cuda" in dockerfile
