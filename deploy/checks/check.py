#!/usr/bin/env python3
"""Checks tern's rendered Kubernetes manifests, its Grafana dashboard and its Dockerfile.

Run by .ci/deploy-checks in the deploy venv (kubernetes-validate, PyYAML, dockerfile, promql-parser):

    check.py --dockerfile deploy/docker/Dockerfile --dashboard DASHBOARD.json RENDERED.yaml...

Each RENDERED.yaml is one `kubectl kustomize` output. Every object is validated against the Kubernetes OpenAPI
schemas, offline and strictly (unknown fields are errors), for each version in KUBERNETES_VERSIONS. Objects of
the KEDA and Prometheus Operator CRDs have no schema here: they are skipped by name, and a line says so. An
object of any other kind without a schema is an error (kubernetes-validate alone only warns).

Then the rules that schemas cannot see: the ones deploy/README.md promises (non-root, no capabilities,
read-only root, probes, requests and limits, a termination grace longer than the drain, only ingest reachable
from outside) and the names shared with the code (ports, config keys, metrics, the KEDA scaler address);
every PromQL expression (alerts, scaler query, dashboard) must parse.

Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

import dockerfile
import promql_parser
import yaml
from kubernetes_validate import utils as kv

# Oldest and newest Kubernetes versions the manifests are promised to (deploy/README.md).
KUBERNETES_VERSIONS = ["1.31", "1.37"]

# API groups of CRDs without schemas here: KEDA, Prometheus Operator.
SKIPPED_GROUPS = {"keda.sh": "KEDA CRD", "monitoring.coreos.com": "Prometheus Operator CRD"}

# The metric names of the telemetry contract (issue #18); histograms also have _bucket, _sum and _count.
COUNTERS_AND_GAUGES = {
    "tern_messages_received_total",
    "tern_queue_jobs",
    "tern_queue_oldest_age_seconds",
    "tern_queue_domain_jobs",
    "tern_deliveries_total",
    "tern_connections_total",
    "tern_dns_lookups_total",
    "tern_mta_sts_total",
    "tern_queue_store_errors_total",
}
HISTOGRAMS = {"tern_delivery_latency_seconds", "tern_smtp_transaction_duration_seconds"}
CONTRACT_METRICS = (
    COUNTERS_AND_GAUGES
    | HISTOGRAMS
    | {f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
)

# Contract ports: the container port each listener key must name.
METRICS_PORT = 9090
ROLE_LISTENERS = {
    "ingest": {"smtp": ("ingest", "smtp_listen", 587), "smtps": ("ingest", "smtps_listen", 465),
               "grpc": ("ingest", "grpc_listen", 7071)},
    "control": {"grpc": ("control", "grpc_listen", 7070)},
    "worker": {},
}
# The config section whose shutdown_grace a role drains for on SIGTERM.
DRAIN_SECTION = {"ingest": "ingest", "worker": "delivery"}
DEFAULT_DRAIN_SECONDS = 30
CONFIG_PATH = "/etc/tern/tern.toml"
KEDA_METADATA_KEY = "jobsPerWorker"

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --- Schemas -------------------------------------------------------------------------------------------------

def validate_schemas(source: str, objects: list[dict]) -> None:
    validated = skipped = 0
    for obj in objects:
        group = obj.get("apiVersion", "").split("/")[0] if "/" in obj.get("apiVersion", "") else ""
        if group in SKIPPED_GROUPS:
            print(f"  skipped {name_of(obj)} ({obj['apiVersion']}): {SKIPPED_GROUPS[group]}, no schema offline")
            skipped += 1
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                problem(f"{source} {name_of(obj)}", f"schema {version} (strict): {path}: {error.message}")
            except kv.SchemaNotFoundError as error:
                problem(f"{source} {name_of(obj)}", error.message)
        validated += 1
    print(f"  {validated} objects valid against Kubernetes {' and '.join(KUBERNETES_VERSIONS)} (strict), "
          f"{skipped} CRD objects skipped")


# --- Rules ---------------------------------------------------------------------------------------------------

def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def listen_port(where: str, value, key: str) -> list[int]:
    """Ports of a listen value (one "host:port" or a list of them); the host must be every interface."""
    values = value if isinstance(value, list) else [value]
    ports = []
    for address in values:
        host, _, port = str(address).rpartition(":")
        if host not in ("0.0.0.0", "[::]"):
            problem(where, f"{key} = {address!r} listens on {host}, not on every interface")
        ports.append(int(port))
    return ports


def pod_templates(objects: list[dict]):
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield obj, obj["spec"]["template"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def check_pod_security(where: str, pod: dict) -> None:
    spec = pod["spec"]
    pod_security = spec.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True:
        problem(where, "pod securityContext.runAsNonRoot is not true")
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem(where, "pod seccompProfile is not RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        problem(where, "automountServiceAccountToken is not false")
    for container in spec.get("initContainers", []) + spec["containers"]:
        at = f"{where} container {container['name']}"
        security = container.get("securityContext", {})
        if security.get("allowPrivilegeEscalation") is not False:
            problem(at, "allowPrivilegeEscalation is not false")
        if security.get("readOnlyRootFilesystem") is not True:
            problem(at, "readOnlyRootFilesystem is not true")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            problem(at, "capabilities do not drop ALL")
        if security.get("capabilities", {}).get("add"):
            problem(at, "adds capabilities")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    problem(at, f"no {kind}.{resource}")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in container:
                problem(at, f"no {probe}")


def check_references(where: str, pod: dict, secrets: dict, configmaps: dict) -> None:
    """Every Secret and ConfigMap (and key) a pod names is in the render: catches generator name slips."""
    spec = pod["spec"]
    for container in spec["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["key"] not in secrets.get(ref["name"], set()):
                problem(where, f"env {env['name']}: no key {ref['key']!r} in a Secret {ref['name']!r}")
    for volume in spec.get("volumes", []):
        for kind, store, field in (("secret", secrets, "secretName"), ("configMap", configmaps, "name")):
            source = volume.get(kind)
            if source is None:
                continue
            name = source[field]
            if name not in store:
                problem(where, f"volume {volume['name']}: no {kind} {name!r} in the render")
                continue
            for item in source.get("items", []):
                if item["key"] not in store[name]:
                    problem(where, f"volume {volume['name']}: no key {item['key']!r} in {kind} {name!r}")


def check_tern_pod(where: str, template: dict, config: dict) -> None:
    spec = template["spec"]
    container = spec["containers"][0]
    args = container.get("args", [])
    role = args[0] if args else None
    if role not in ROLE_LISTENERS:
        problem(where, f"tern runs {args!r}, not one of the roles {sorted(ROLE_LISTENERS)}")
        return
    if args[1:] != ["--config", CONFIG_PATH]:
        problem(where, f"tern is not given --config {CONFIG_PATH}: {args!r}")
    if spec.get("enableServiceLinks") is not False:
        problem(where, "enableServiceLinks is not false (service variables share tern's TERN_ prefix)")
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    # Probes: the contract's health endpoints on the metrics port.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = container.get(probe, {}).get("httpGet", {})
        if http.get("path") != path or ports.get(http.get("port"), http.get("port")) != METRICS_PORT:
            problem(where, f"{probe} is not GET {path} on port {METRICS_PORT}")
    if ports.get("metrics") != METRICS_PORT:
        problem(where, f"no container port metrics={METRICS_PORT}")
    metrics_listen = config.get("telemetry", {}).get("metrics_listen", "127.0.0.1:9090")
    if listen_port(f"{where} tern.toml", metrics_listen, "telemetry.metrics_listen") != [METRICS_PORT]:
        problem(where, f"telemetry.metrics_listen {metrics_listen!r} is not port {METRICS_PORT}")
    for port_name, (section, key, port) in ROLE_LISTENERS[role].items():
        value = config.get(section, {}).get(key)
        if value is None:
            problem(where, f"tern.toml has no {section}.{key} (the default is loopback only)")
            continue
        if listen_port(f"{where} tern.toml", value, f"{section}.{key}") != [port] or ports.get(port_name) != port:
            problem(where, f"{section}.{key} = {value!r} and container port {port_name} are not both {port}")
    # The termination grace covers the preStop pause and the drain.
    if role in DRAIN_SECTION:
        section = DRAIN_SECTION[role]
        drain = duration_seconds(config.get(section, {}).get("shutdown_grace", f"{DEFAULT_DRAIN_SECONDS}s"))
        pause = 0
        command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if command[:1] == ["sleep"]:
            pause = float(command[1])
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= drain + pause:
            problem(where, f"terminationGracePeriodSeconds {grace} is not longer than the preStop pause ({pause:g} s)"
                           f" plus {section}.shutdown_grace ({drain:g} s)")
    if not any(env["name"] == "TERN_QUEUE__URL" and "secretKeyRef" in env.get("valueFrom", {})
               for env in container.get("env", [])):
        problem(where, "TERN_QUEUE__URL does not come from a Secret")


def check_image_user(where: str, template: dict, image_uid: int | None) -> None:
    if image_uid is None:
        return
    uid = template["spec"].get("securityContext", {}).get("runAsUser")
    if uid != image_uid:
        problem(where, f"runAsUser {uid} is not the image's user {image_uid} (deploy/docker/Dockerfile)")


def check_services(source: str, objects: list[dict]) -> None:
    templates = [template for _, template in pod_templates(objects)]
    for service in (obj for obj in objects if obj["kind"] == "Service"):
        where = f"{source} {name_of(service)}"
        selector = service["spec"].get("selector", {})
        selected = [t for t in templates if selects(selector, t["metadata"].get("labels", {}))]
        if not selected:
            problem(where, f"selects no pod ({selector})")
            continue
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for template in selected:
                names = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
                numbers = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
                if target not in names and target not in numbers:
                    problem(where, f"port {port['name']}: target {target!r} is not a port of the pods it selects")
    for pdb in (obj for obj in objects if obj["kind"] == "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        if not any(selects(selector, t["metadata"].get("labels", {})) for t in templates):
            problem(f"{source} {name_of(pdb)}", "selects no pod")


def check_autoscaling(source: str, objects: list[dict], namespace: str) -> None:
    deployments = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "Deployment"}
    scalers: dict[str, list[str]] = {}
    for obj in objects:
        if obj["kind"] == "HorizontalPodAutoscaler" or (obj["kind"] == "ScaledObject"
                                                        and obj["apiVersion"].startswith("keda.sh/")):
            target = obj["spec"]["scaleTargetRef"]["name"]
            scalers.setdefault(target, []).append(name_of(obj))
            if target not in deployments:
                problem(f"{source} {name_of(obj)}", f"scales {target!r}, which is not a Deployment here")
        if obj["kind"] != "ScaledObject":
            continue
        for trigger in obj["spec"]["triggers"]:
            metadata = trigger.get("metadata", {})
            where = f"{source} {name_of(obj)} trigger {trigger['type']}"
            if trigger["type"] in ("external", "external-push"):
                expected = f"tern-control.{namespace}.svc:7070"
                if metadata.get("scalerAddress") != expected:
                    problem(where, f"scalerAddress {metadata.get('scalerAddress')!r} is not {expected!r}")
                if not str(metadata.get(KEDA_METADATA_KEY, "")).isdigit():
                    problem(where, f"metadata {KEDA_METADATA_KEY} is missing or not a number")
            elif trigger["type"] == "prometheus":
                check_promql(where, [metadata.get("query", "")])
                if f'namespace="{namespace}"' not in metadata.get("query", ""):
                    problem(where, f'the query does not select namespace="{namespace}"')
    if "tern-worker" not in scalers:
        problem(source, "nothing scales tern-worker (components keda, keda-prometheus or hpa)")
    for target, names in scalers.items():
        if len(names) > 1:
            problem(source, f"{target} has {len(names)} autoscalers ({', '.join(names)}): use one component")


def rule_sources(rule: dict) -> set[str]:
    """Who may connect under one NetworkPolicy ingress rule: 'anywhere', or 'cluster' when it names peers."""
    peers = rule.get("from")
    if not peers:
        return {"anywhere"}
    return {"anywhere" if "ipBlock" in peer else "cluster" for peer in peers}


def check_network_policies(source: str, objects: list[dict]) -> None:
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    if not any(p["spec"]["podSelector"] == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies):
        problem(source, "no default-deny NetworkPolicy")
    templates = {obj["metadata"]["name"]: template for obj, template in pod_templates(objects)}
    for name, template in templates.items():
        labels = template["metadata"].get("labels", {})
        applying = [p for p in policies if p["spec"]["podSelector"] and
                    selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)]
        if not applying:
            problem(f"{source} {name}", "no NetworkPolicy of its own")
        from_anywhere = [rule for p in applying for rule in p["spec"].get("ingress", [])
                         if "anywhere" in rule_sources(rule)]
        is_ingest = labels.get("app.kubernetes.io/component") == "ingest"
        if from_anywhere and not is_ingest:
            problem(f"{source} {name}", "reachable from outside the cluster: only ingest may be")
        if is_ingest:
            open_ports = {port["port"] for rule in from_anywhere for port in rule.get("ports", [])}
            if not {587, 465}.issubset(open_ports):
                problem(f"{source} {name}", f"SMTP ports 587 and 465 are not open to clients ({sorted(open_ports)})")
        if labels.get("app.kubernetes.io/component") == "worker":
            egress_ports = {port["port"] for p in applying for rule in p["spec"].get("egress", [])
                            for port in rule.get("ports", [])}
            for port in (25, 443, 53):
                if port not in egress_ports:
                    problem(f"{source} {name}", f"workers may not reach out on port {port}")


def check_namespace(source: str, objects: list[dict], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue
        if obj.get("metadata", {}).get("namespace") != namespace:
            problem(f"{source} {name_of(obj)}", f"not in the namespace {namespace!r}")


def check_promql(where: str, expressions: list[str]) -> None:
    """Each expression parses as PromQL and names only the contract's tern metrics."""
    for expression in expressions:
        # Grafana's variables are not PromQL: give them values first.
        concrete = expression.replace("$__rate_interval", "5m").replace("$namespace", "tern")
        try:
            promql_parser.parse(concrete)
        except ValueError as error:
            problem(where, f"PromQL does not parse ({error}): {expression}")
        for metric in set(re.findall(r"\btern_[a-z_]+", expression)):
            if metric not in CONTRACT_METRICS:
                problem(where, f"metric {metric} is not in the telemetry contract")


def check_render(path: Path, image_uid: int | None) -> None:
    source = path.name
    objects = [obj for obj in yaml.safe_load_all(path.read_text()) if obj]
    print(f"{source}: {len(objects)} objects")
    validate_schemas(source, objects)
    namespaces = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "Namespace"]
    if len(namespaces) != 1:
        problem(source, f"expected one Namespace, found {namespaces}")
        return
    namespace = namespaces[0]
    check_namespace(source, objects, namespace)
    secrets = {obj["metadata"]["name"]: set(obj.get("data", {})) | set(obj.get("stringData", {}))
               for obj in objects if obj["kind"] == "Secret"}
    configmaps = {obj["metadata"]["name"]: set(obj.get("data", {})) for obj in objects if obj["kind"] == "ConfigMap"}
    tern_configs = [obj for obj in objects if obj["kind"] == "ConfigMap" and "tern.toml" in obj.get("data", {})]
    if len(tern_configs) != 1:
        problem(source, f"expected one ConfigMap with tern.toml, found {len(tern_configs)}")
        return
    try:
        config = tomllib.loads(tern_configs[0]["data"]["tern.toml"])
    except tomllib.TOMLDecodeError as error:
        problem(f"{source} {name_of(tern_configs[0])}", f"tern.toml does not parse: {error}")
        return
    for obj, template in pod_templates(objects):
        where = f"{source} {name_of(obj)}"
        check_pod_security(where, template)
        check_references(where, template, secrets, configmaps)
        if template["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "tern":
            check_tern_pod(where, template, config)
            check_image_user(where, template, image_uid)
    check_services(source, objects)
    check_autoscaling(source, objects, namespace)
    check_network_policies(source, objects)
    for rule in (obj for obj in objects if obj["kind"] == "PrometheusRule"):
        check_promql(f"{source} {name_of(rule)}",
                           [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]])


# --- Dashboard and Dockerfile --------------------------------------------------------------------------------

def check_dashboard(path: Path) -> None:
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        problem(str(path), f"not JSON: {error}")
        return
    panels = [p for p in dashboard.get("panels", []) if p.get("type") != "row"]
    titles = " ".join(p.get("title", "") for p in dashboard.get("panels", [])).lower()
    for needed in ("queue", "delivery", "latency"):
        if needed not in titles:
            problem(str(path), f"no {needed} panel or row")
    expressions = [t.get("expr", "") for p in panels for t in p.get("targets", [])]
    if not expressions:
        problem(str(path), "no queries")
    check_promql(str(path), expressions)
    print(f"{path.name}: JSON parses, {len(panels)} panels, {len(expressions)} queries")


def check_dockerfile(path: Path) -> int | None:
    """Returns the runtime user's numeric uid."""
    where = str(path)
    commands = dockerfile.parse_file(str(path))
    stages = [c for c in commands if c.cmd == "FROM"]
    args = {c.value[0].split("=")[0]: c.value[0].split("=", 1)[1] for c in commands if c.cmd == "ARG"
            and "=" in c.value[0]}
    images = [args.get(s.value[0].strip("${}"), s.value[0]) for s in stages]
    if len(stages) < 2:
        problem(where, "not a multi-stage build")
        return None
    if not images[0].startswith("rust:1.95"):
        problem(where, f"the builder is {images[0]}, not rust:1.95 (rust-version in Cargo.toml)")
    if not images[-1].startswith("debian:bookworm-slim"):
        problem(where, f"the runtime is {images[-1]}, not debian:bookworm-slim")
    runtime = commands[commands.index(stages[-1]):]
    build = " ".join(c.value[0] for c in commands[:commands.index(stages[-1])] if c.cmd == "RUN")
    if "cargo build --release --locked -p tern -p ternctl" not in build:
        problem(where, "the builder does not run 'cargo build --release --locked -p tern -p ternctl'")
    if "--features tern/jemalloc" not in build:
        problem(where, "the builder does not build tern with its jemalloc feature (--features tern/jemalloc)")
    if "protobuf-compiler" in build:
        problem(where, "the builder installs protobuf-compiler, which the build no longer needs (protox)")
    copies = " ".join(" ".join(c.value) for c in runtime if c.cmd == "COPY")
    for binary in ("tern", "ternctl"):
        if f"/{binary} " not in copies + " ":
            problem(where, f"the runtime does not get the {binary} binary")
    if "ca-certificates" not in " ".join(c.value[0] for c in runtime if c.cmd == "RUN"):
        problem(where, "the runtime has no ca-certificates")
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    uid = None
    if not users or not users[-1].split(":")[0].isdigit() or users[-1].split(":")[0] == "0":
        problem(where, f"the runtime user is not a numeric non-root uid: {users}")
    else:
        uid = int(users[-1].split(":")[0])
    entrypoint = [c for c in runtime if c.cmd == "ENTRYPOINT"]
    if not entrypoint or not entrypoint[-1].json or list(entrypoint[-1].value) != ["tern"]:
        problem(where, 'ENTRYPOINT is not ["tern"] (exec form)')
    exposed = {int(port.split("/")[0]) for c in runtime if c.cmd == "EXPOSE" for port in c.value}
    for port in (587, 465, 7071, 7070, METRICS_PORT):
        if port not in exposed:
            problem(where, f"port {port} is not exposed")
    print(f"{path.name}: {len(stages)} stages ({', '.join(images)}), user {users[-1] if users else None}, "
          f"exposes {sorted(exposed)}")
    return uid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", type=Path, required=True)
    parser.add_argument("--dashboard", type=Path, required=True)
    parser.add_argument("rendered", type=Path, nargs="+")
    options = parser.parse_args()
    image_uid = check_dockerfile(options.dockerfile)
    check_dashboard(options.dashboard)
    for path in options.rendered:
        check_render(path, image_uid)
    for line in problems:
        print(f"FAIL {line}")
    print(f"deploy checks: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
