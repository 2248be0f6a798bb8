"""Validation of the deployment files that cannot run here (no container engine, no cluster).

Run by tests/tests/deploy.rs with tests/deploy/.venv's Python (scripts/test creates it from
requirements.txt), one check per invocation:

    tests/deploy/.venv/bin/python tests/deploy/check.py CHECK

CHECK is one of:
  compose     docker-compose.yml: `docker-compose config -q` (without a profile, and with the
              monitoring and the cluster profile), and what the gateways, workers and Redis must
              be given; the cluster profile's six nodes (password, announced hostnames), the
              one-shot service that creates the cluster, and its gateways and workers on
              SWITCHBOARD_REDIS_CLUSTER (seeds among the nodes, waiting for the cluster).
  kustomize   every overlay (and each with the opt-in components) rendered by `kubectl kustomize`
              (the venv's kubectl); the built-in kinds through `kubernetes-validate --strict`; the
              CRD kinds (ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication)
              checked for apiVersion/kind and the fields that tie them to the rest; and the
              invariants the manifests promise (drain timing, securityContext, Secrets, probes).
  rules       the PrometheusRule's groups: `promtool check rules`, `promtool test rules` with
              alerts.test.yaml, every metric name known, every alert annotated; the compose
              Prometheus' copy of the groups equal to them; `promtool check config`.
  dashboard   the Grafana dashboard parses, every metric it queries is known, the panels cover
              what docs/operations.md promises, and the ConfigMap ships the same JSON.
  dockerfile  the Dockerfile's manifest and stub lists name every workspace member and declared
              target, its source list every member the binary depends on, and the stub layout
              loads as a workspace (`cargo metadata --locked --offline` for the host's
              platform: a build fetches only its own platform's crates, so another's, such as
              android_system_properties, may be missing from the cache of a fresh machine).
  nginx       deploy/nginx.conf passes `nginx -t` and logs no query strings.
  envnames    every SWITCHBOARD_* variable that the manifests, the compose file and the
              Dockerfile give to `switchboard` is one that the workspace's sources read (a typo
              would be silently ignored by the binary).

Exit status 0 when the check passes; otherwise 1 with every problem found on stderr.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# The metric names agreed for issue 14 (docs/operations.md lists them). Counters carry their
# exposed `_total` suffix; histograms are listed by base name (_bucket, _sum, _count follow).
GATEWAY_METRICS = {
    # Present before issue 14 (gateway/src/metrics.rs).
    "switchboard_connections",
    "switchboard_connections_accepted_total",
    "switchboard_events_received_total",
    "switchboard_events_invalid_total",
    "switchboard_events_dropped_total",
    "switchboard_deliveries_total",
    "switchboard_slow_consumer_closes_total",
    "switchboard_publishes_total",
    "switchboard_backend_subscriptions",
    "switchboard_ready",
    "switchboard_sessions_resumed_total",
    "switchboard_events_recovered_total",
    "switchboard_connections_capped_total",
    "switchboard_replays_total",
    "switchboard_replay_pages_read_total",
    "switchboard_events_oversized_total",
    "switchboard_requests_rate_limited_total",
    "switchboard_connections_rate_limited_total",
    "switchboard_identity_rate_limited_total",
    "switchboard_rate_leases_total",
    "switchboard_forbidden_total",
    "switchboard_origins_refused_total",
    "switchboard_hosts_refused_total",
    # New.
    "switchboard_build_info",
    "switchboard_tool_calls_total",
    "switchboard_redis_errors_total",
    "switchboard_closes_total",
    "switchboard_auth_failures_total",
    "switchboard_outbound_queue_events",
    "switchboard_fanout_queue_events",
    "switchboard_calls_in_flight",
    "switchboard_tool_workers",
}
WORKER_METRICS = {
    "switchboard_worker_jobs_total",
    "switchboard_worker_running",
    "switchboard_worker_backlog",
    "switchboard_queue_pending_jobs",
    "switchboard_queue_lag_jobs",
    "switchboard_dead_letters_total",
    "switchboard_worker_ready",
}
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}
HISTOGRAMS = {
    "switchboard_delivery_latency_seconds",
    "switchboard_tool_call_duration_seconds",
    "switchboard_redis_operation_duration_seconds",
    "switchboard_worker_job_duration_seconds",
}
# Prometheus' own series.
BUILTIN_SERIES = {"up"}

KNOWN_METRICS = (
    GATEWAY_METRICS
    | WORKER_METRICS
    | PROCESS_METRICS
    | BUILTIN_SERIES
    | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
)

# Kinds outside the Kubernetes API schemas, and the apiVersion each must have.
CRD_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
}

# Secrets the prod overlay expects the operator to create (secret.example.yaml).
USER_SECRETS = {"switchboard", "switchboard-redis", "switchboard-redis-ca"}

# What to render: (name, overlay, components).
RENDERS = [
    ("dev", "k8s/overlays/dev", []),
    ("prod", "k8s/overlays/prod", []),
    ("dev+monitoring", "k8s/overlays/dev", ["k8s/components/monitoring"]),
    (
        "prod+monitoring+keda+redis-ca",
        "k8s/overlays/prod",
        ["k8s/components/monitoring", "k8s/components/keda", "k8s/components/redis-ca"],
    ),
    ("prod+redis-cluster+redis-ca", "k8s/overlays/prod", ["k8s/components/redis-cluster", "k8s/components/redis-ca"]),
]


class Problems:
    """Collects every problem of a check, so one run reports them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.add(message)


def tool(name: str, install: str) -> str:
    """The path of a command-line tool, the venv's first; exits with how to install it."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"check.py: `{name}` is not installed: {install} (scripts/test does)")
    return found


def run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def metric_names(expr: str) -> set[str]:
    """The metric-like names in a PromQL expression (ours and process_*, plus `up`)."""
    names = set(re.findall(r"\b((?:switchboard|process)_[a-z0-9_]+)\b", expr))
    if re.search(r"\bup\s*\{", expr):
        names.add("up")
    return names


def duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unreadable duration {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60}[unit]


# ---- compose ------------------------------------------------------------------------------------


# The `cluster` profile: six Redis Cluster nodes (three primaries, three replicas), the one-shot
# service that creates the cluster, and gateways and workers on SWITCHBOARD_REDIS_CLUSTER.
CLUSTER_NODES = [f"redis-c{i}" for i in range(1, 7)]
CLUSTER_INIT = "redis-cluster-init"
CLUSTER_CLIENTS = ["gateway-cluster-1", "gateway-cluster-2", "worker-cluster-1", "worker-cluster-2"]


def flag_value(command: list, flag: str) -> object:
    """The argument after `flag` in a command list (None when absent)."""
    return command[command.index(flag) + 1] if flag in command and command.index(flag) + 1 < len(command) else None


def check_compose(p: Problems) -> None:
    compose = tool("docker-compose", "apt-get install docker-compose")
    for extra in ([], ["--profile", "monitoring"], ["--profile", "cluster"]):
        result = run([compose, "-f", "docker-compose.yml", *extra, "config", "-q"], cwd=ROOT)
        p.check(result.returncode == 0, f"docker-compose {' '.join(extra)} config -q failed:\n{result.stderr}")
    result = run(
        [compose, "-f", "docker-compose.yml", "--profile", "monitoring", "--profile", "cluster", "config"], cwd=ROOT
    )
    if result.returncode != 0:
        p.add(f"docker-compose config failed:\n{result.stderr}")
        return
    config = yaml.safe_load(result.stdout)
    services = config.get("services", {})
    for name in ("redis", "gateway-1", "gateway-2", "worker-1", "worker-2", "lb", "prometheus", CLUSTER_INIT, *CLUSTER_NODES, *CLUSTER_CLIENTS):
        p.check(name in services, f"docker-compose.yml: no service {name}")
    # Opt-in services carry their profile (docker-compose 1.29's `config` lists every service
    # whatever the profiles given, so this is read from the services themselves).
    wanted = {"prometheus": "monitoring", **{n: "cluster" for n in (CLUSTER_INIT, *CLUSTER_NODES, *CLUSTER_CLIENTS)}}
    for name, service in services.items():
        profiles = service.get("profiles") or []
        if name in wanted:
            p.check(profiles == [wanted[name]], f"{name}: profiles {profiles}, not [{wanted[name]}]")
        else:
            p.check(not profiles, f"{name}: in profiles {profiles}, but it is part of the default stack")
    redis = services.get("redis", {})
    command = redis.get("command") or []
    p.check("--requirepass" in command, "redis: no --requirepass")
    p.check("noeviction" in command, "redis: not noeviction")
    password = flag_value(command, "--requirepass")
    p.check(
        redis.get("environment", {}).get("REDISCLI_AUTH") == password,
        "redis: the healthcheck's REDISCLI_AUTH is not the requirepass password",
    )
    p.check("healthcheck" in redis, "redis: no healthcheck")
    check_cluster_profile(services, password, p)
    for name, service in services.items():
        env = service.get("environment", {}) or {}
        if not (name.startswith("gateway") or name.startswith("worker")):
            continue
        p.check(env.get("SWITCHBOARD_REDIS_PASSWORD") == password, f"{name}: SWITCHBOARD_REDIS_PASSWORD is not Redis' password")
        on_cluster = name in CLUSTER_CLIENTS
        p.check(
            ("SWITCHBOARD_REDIS" in env) != ("SWITCHBOARD_REDIS_CLUSTER" in env),
            f"{name}: exactly one of SWITCHBOARD_REDIS and SWITCHBOARD_REDIS_CLUSTER must be set",
        )
        if on_cluster:
            p.check("cluster" in (service.get("profiles") or []), f"{name}: not in the cluster profile")
            p.check(
                service.get("depends_on", {}).get(CLUSTER_INIT, {}).get("condition") == "service_completed_successfully",
                f"{name}: does not wait for {CLUSTER_INIT} to have created the cluster",
            )
            p.check("redis" not in service.get("depends_on", {}), f"{name}: waits for the single Redis it does not use")
            seeds = [s.strip() for s in str(env.get("SWITCHBOARD_REDIS_CLUSTER", "")).split(",") if s.strip()]
            p.check(len(seeds) >= 2, f"{name}: SWITCHBOARD_REDIS_CLUSTER names fewer than two seed nodes")
            for seed in seeds:
                host = re.sub(r"^rediss?://", "", seed).split("/")[0].rsplit(":", 1)[0].split("@")[-1]
                p.check(host in CLUSTER_NODES, f"{name}: seed {seed} is not a cluster node service")
        else:
            p.check(service.get("depends_on", {}).get("redis", {}).get("condition") == "service_healthy", f"{name}: does not wait for a healthy Redis")
        grace_key = "SWITCHBOARD_SHUTDOWN_GRACE" if name.startswith("gateway") else "SWITCHBOARD_WORKER_SHUTDOWN_GRACE"
        grace = duration_seconds(env.get(grace_key, "10s"))
        if name.startswith("gateway"):
            grace += duration_seconds(env.get("SWITCHBOARD_DRAIN_SPREAD", "5s"))
            grace += duration_seconds(env.get("SWITCHBOARD_DRAIN_DELAY", "0s"))
        stop = duration_seconds(str(service.get("stop_grace_period", "10s")))
        p.check(stop > grace, f"{name}: stop_grace_period {stop}s is not longer than its drain ({grace}s)")
        admin_key = "SWITCHBOARD_ADMIN_LISTEN" if name.startswith("gateway") else "SWITCHBOARD_WORKER_ADMIN_LISTEN"
        p.check(env.get(admin_key, "").endswith(":9090"), f"{name}: {admin_key} is not on port 9090")
        # `config` writes ports as "HOST_IP:HOST_PORT:CONTAINER_PORT/PROTO" strings.
        published = [int(str(port).split("/")[0].rsplit(":", 1)[-1]) for port in service.get("ports", [])]
        p.check(9090 in published, f"{name}: its admin port 9090 is not published")
    host_ports = [
        str(port).split("/")[0].rsplit(":", 1)[0] for service in services.values() for port in service.get("ports", [])
    ]
    dupes = sorted({hp for hp in host_ports if host_ports.count(hp) > 1})
    p.check(not dupes, f"docker-compose.yml: host ports published twice: {dupes}")


def check_cluster_profile(services: dict, password: object, p: Problems) -> None:
    """The Redis Cluster nodes and the one-shot service that creates the cluster."""
    for name in CLUSTER_NODES:
        node = services.get(name)
        if node is None:
            continue
        command = [str(c) for c in node.get("command") or []]
        p.check("cluster" in (node.get("profiles") or []), f"{name}: not in the cluster profile")
        p.check(flag_value(command, "--cluster-enabled") == "yes", f"{name}: not --cluster-enabled yes")
        p.check(flag_value(command, "--requirepass") == password, f"{name}: --requirepass is not the single Redis' password")
        p.check(flag_value(command, "--masterauth") == password, f"{name}: --masterauth is not the password (a replica could not sync)")
        p.check("noeviction" in command, f"{name}: not noeviction")
        # Clients are sent to the address a node announces: it must resolve inside compose.
        announced = flag_value(command, "--cluster-announce-hostname")
        p.check(announced == name, f"{name}: announces {announced!r}, not its service name")
        p.check(
            flag_value(command, "--cluster-preferred-endpoint-type") == "hostname",
            f"{name}: clients are not sent the announced hostname (--cluster-preferred-endpoint-type hostname)",
        )
        p.check("healthcheck" in node, f"{name}: no healthcheck")
        p.check(node.get("environment", {}).get("REDISCLI_AUTH") == password, f"{name}: REDISCLI_AUTH is not the password")
    init = services.get(CLUSTER_INIT)
    if init is None:
        return
    p.check("cluster" in (init.get("profiles") or []), f"{CLUSTER_INIT}: not in the cluster profile")
    waits = init.get("depends_on", {})
    for name in CLUSTER_NODES:
        p.check(waits.get(name, {}).get("condition") == "service_healthy", f"{CLUSTER_INIT}: does not wait for {name} to answer")
    script = " ".join(str(c) for c in [*(init.get("entrypoint") or []), *(init.get("command") or [])])
    p.check("--cluster create" in script, f"{CLUSTER_INIT}: does not run redis-cli --cluster create")
    p.check("--cluster-replicas 1" in script, f"{CLUSTER_INIT}: not one replica per primary")
    p.check("--cluster-yes" in script, f"{CLUSTER_INIT}: would wait for a yes on its terminal")
    p.check(all(n in script for n in CLUSTER_NODES), f"{CLUSTER_INIT}: does not join all six nodes")
    p.check(init.get("environment", {}).get("REDISCLI_AUTH") == password, f"{CLUSTER_INIT}: REDISCLI_AUTH is not the password")
    p.check(str(init.get("restart", "no")) == "no", f"{CLUSTER_INIT}: a one-shot service must not restart")


# ---- kustomize ----------------------------------------------------------------------------------


def render(name: str, overlay: str, components: list[str], p: Problems) -> list[dict] | None:
    kubectl = tool("kubectl", "pip install -r tests/deploy/requirements.txt into tests/deploy/.venv")
    target = ROOT / overlay
    with tempfile.TemporaryDirectory() as tmp:
        if components:
            # A throwaway kustomization adding the components (paths must be relative).
            rel = lambda path: os.path.relpath(ROOT / path, tmp)  # noqa: E731
            Path(tmp, "kustomization.yaml").write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "kustomize.config.k8s.io/v1beta1",
                        "kind": "Kustomization",
                        "resources": [rel(overlay)],
                        "components": [rel(c) for c in components],
                    }
                )
            )
            target = Path(tmp)
        result = run([kubectl, "kustomize", str(target)])
    if result.returncode != 0:
        p.add(f"{name}: kubectl kustomize failed:\n{result.stderr}")
        return None
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate_schemas(name: str, docs: list[dict], p: Problems) -> None:
    validator = tool("kubernetes-validate", "pip install -r tests/deploy/requirements.txt into tests/deploy/.venv")
    builtin = [d for d in docs if d.get("kind") not in CRD_KINDS]
    for doc in docs:
        kind = doc.get("kind")
        if kind in CRD_KINDS:
            p.check(doc.get("apiVersion") == CRD_KINDS[kind], f"{name}: {kind} has apiVersion {doc.get('apiVersion')}, not {CRD_KINDS[kind]}")
            p.check(bool(doc.get("metadata", {}).get("name")), f"{name}: a {kind} without a name")
            p.check(isinstance(doc.get("spec"), dict) and doc["spec"], f"{name}: {kind} without a spec")
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, doc in enumerate(builtin):
            path = Path(tmp, f"{i:02d}-{doc.get('kind')}-{doc.get('metadata', {}).get('name')}.yaml")
            path.write_text(yaml.safe_dump(doc))
            files.append(str(path))
        result = run([validator, "--strict", "--quiet", *files])
        if result.returncode != 0:
            p.add(f"{name}: kubernetes-validate --strict failed:\n{result.stdout}{result.stderr}")


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def check_invariants(name: str, docs: list[dict], p: Problems) -> None:
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    secrets = {n.rsplit("-", 1)[0] if re.search(r"-[a-z0-9]{10}$", n) else n for n in by_kind(docs, "Secret")}
    secrets |= set(by_kind(docs, "Secret"))
    configmaps = set(by_kind(docs, "ConfigMap"))
    is_dev = name.startswith("dev")

    gateway = deployments.get("switchboard-gateway")
    worker = deployments.get("switchboard-worker")
    p.check(gateway is not None, f"{name}: no switchboard-gateway Deployment")
    p.check(worker is not None, f"{name}: no switchboard-worker Deployment")
    if gateway is None or worker is None:
        return

    for dname, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        p.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 10001, f"{name}/{dname}: not runAsNonRoot as 10001")
        p.check(pod.get("automountServiceAccountToken") is False, f"{name}/{dname}: mounts a service account token")
        p.check(pod.get("serviceAccountName") == "switchboard", f"{name}/{dname}: not the switchboard ServiceAccount")
        for c in pod["containers"]:
            csc = c.get("securityContext", {})
            p.check(csc.get("readOnlyRootFilesystem") is True, f"{name}/{dname}: root filesystem writable")
            p.check(csc.get("allowPrivilegeEscalation") is False, f"{name}/{dname}: privilege escalation allowed")
            p.check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{dname}: capabilities not dropped")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    p.check(r in res.get(part, {}), f"{name}/{dname}: no {part}.{r}")
            p.check("lifecycle" not in c, f"{name}/{dname}: a lifecycle hook (the drain needs none)")
            # Every Secret and ConfigMap a container names exists in the render, or is one the
            # operator creates (prod).
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    known = ref["name"] in secrets or (not is_dev and ref["name"] in USER_SECRETS)
                    p.check(known, f"{name}/{dname}: env {e['name']} names Secret {ref['name']}, which nothing provides")
                if e["name"] in ("SWITCHBOARD_REDIS", "SWITCHBOARD_REDIS_CLUSTER"):
                    p.check(ref is not None, f"{name}/{dname}: {e['name']} is not from a Secret")
                if e["name"] == "SWITCHBOARD_REDIS_PASSWORD":
                    p.check(ref is not None, f"{name}/{dname}: SWITCHBOARD_REDIS_PASSWORD is not from a Secret")
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    p.check(ef["configMapRef"]["name"] in configmaps, f"{name}/{dname}: envFrom names a missing ConfigMap {ef['configMapRef']['name']}")
            env = env_of(c)
            p.check("SWITCHBOARD_REDIS_PASSWORD" in env, f"{name}/{dname}: no SWITCHBOARD_REDIS_PASSWORD")
            # Where Redis is: one server (or Sentinel), or a cluster's seeds with the component.
            where = "SWITCHBOARD_REDIS_CLUSTER" if "redis-cluster" in name else "SWITCHBOARD_REDIS"
            other = "SWITCHBOARD_REDIS" if "redis-cluster" in name else "SWITCHBOARD_REDIS_CLUSTER"
            p.check(where in env, f"{name}/{dname}: no {where}")
            p.check(other not in env, f"{name}/{dname}: {other} as well as {where} (they are exclusive)")

    # Drain: the pod's grace covers the node's, and readiness notices a drain quickly.
    g = gateway["spec"]["template"]["spec"]
    gc = g["containers"][0]
    genv = env_of(gc)
    delay = duration_seconds(genv.get("SWITCHBOARD_DRAIN_DELAY", {}).get("value", "0s"))
    drain = (
        duration_seconds(genv.get("SWITCHBOARD_SHUTDOWN_GRACE", {}).get("value", "10s"))
        + duration_seconds(genv.get("SWITCHBOARD_DRAIN_SPREAD", {}).get("value", "5s"))
        + delay
    )
    p.check(g.get("terminationGracePeriodSeconds", 30) > drain, f"{name}: gateway terminationGracePeriodSeconds not above its drain ({drain}s)")
    rp = gc.get("readinessProbe", {})
    p.check(rp.get("httpGet", {}).get("path") == "/readyz", f"{name}: gateway readiness probe is not /readyz")
    p.check(rp.get("periodSeconds", 10) * rp.get("failureThreshold", 3) <= 5, f"{name}: gateway readiness takes over 5 s to notice a drain")
    p.check(
        delay >= rp.get("periodSeconds", 10) * rp.get("failureThreshold", 3),
        f"{name}: SWITCHBOARD_DRAIN_DELAY ({delay}s) is shorter than the readiness probe takes to notice a drain",
    )
    p.check(gc["resources"]["limits"]["memory"] in ("2Gi", "2048Mi"), f"{name}: gateway memory limit is not the sized 2Gi")
    w = worker["spec"]["template"]["spec"]
    wc = w["containers"][0]
    wenv = env_of(wc)
    wgrace = duration_seconds(wenv.get("SWITCHBOARD_WORKER_SHUTDOWN_GRACE", {}).get("value", "10s"))
    p.check(w.get("terminationGracePeriodSeconds", 30) > wgrace, f"{name}: worker terminationGracePeriodSeconds not above its grace")
    p.check(wenv.get("SWITCHBOARD_WORKER_ADMIN_LISTEN", {}).get("value", "").endswith(":9090"), f"{name}: worker admin not on 9090")
    p.check(wc.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"{name}: worker readiness probe is not /readyz")

    # Services, PDBs, HPAs, NetworkPolicies.
    for sname in ("switchboard-gateway", "switchboard-gateway-admin", "switchboard-worker-admin"):
        p.check(sname in services, f"{name}: no Service {sname}")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    scaled = by_kind(docs, "ScaledObject")
    p.check("switchboard-gateway" in hpas, f"{name}: no gateway HPA")
    worker_scalers = [h for h in hpas if h == "switchboard-worker"] + [s for s in scaled if scaled[s]["spec"]["scaleTargetRef"]["name"] == "switchboard-worker"]
    p.check(len(worker_scalers) == 1, f"{name}: the worker Deployment has {len(worker_scalers)} autoscalers, not 1")
    for hname, hpa in hpas.items():
        p.check(hpa["spec"]["scaleTargetRef"]["name"] in deployments, f"{name}: HPA {hname} targets a missing Deployment")
    for pname, pdb in by_kind(docs, "PodDisruptionBudget").items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        p.check(
            any(sel.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in list(deployments.values()) + list(by_kind(docs, "StatefulSet").values())),
            f"{name}: PDB {pname} selects no pods",
        )
    policies = by_kind(docs, "NetworkPolicy")
    for pname in ("switchboard-gateway", "switchboard-worker"):
        pol = policies.get(pname)
        p.check(pol is not None, f"{name}: no NetworkPolicy {pname}")
        if pol is None:
            continue
        p.check(set(pol["spec"]["policyTypes"]) == {"Ingress", "Egress"}, f"{name}: {pname} does not restrict ingress and egress")
        for rule in pol["spec"].get("ingress", []):
            ports = {port["port"] for port in rule.get("ports", [])}
            if "admin" in ports:
                sources = rule.get("from", [])
                p.check(
                    bool(sources) and all(s.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring" for s in sources),
                    f"{name}: {pname} admits the admin port from outside the monitoring namespace",
                )
        egress_ports = {port["port"] for rule in pol["spec"].get("egress", []) for port in rule.get("ports", [])}
        for port in (53, 6379, 4317):
            p.check(port in egress_ports, f"{name}: {pname} egress does not allow port {port}")

    # ServiceMonitors select the admin Services by label and port.
    for mname, mon in by_kind(docs, "ServiceMonitor").items():
        sel = mon["spec"]["selector"]["matchLabels"]
        matching = [s for s in services.values() if sel.items() <= s["metadata"].get("labels", {}).items()]
        p.check(len(matching) == 1, f"{name}: ServiceMonitor {mname} selects {len(matching)} Services, not 1")
        for s in matching:
            port_names = {port.get("name") for port in s["spec"]["ports"]}
            for ep in mon["spec"]["endpoints"]:
                p.check(ep["port"] in port_names, f"{name}: ServiceMonitor {mname} scrapes port {ep['port']}, not on Service {s['metadata']['name']}")
    if "monitoring" in name:
        dash = [c for c in by_kind(docs, "ConfigMap").values() if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        p.check(len(dash) == 1, f"{name}: no dashboard ConfigMap with the grafana_dashboard label")
        p.check(len(by_kind(docs, "PrometheusRule")) == 1, f"{name}: no PrometheusRule")
    else:
        for kind in CRD_KINDS:
            p.check(not by_kind(docs, kind), f"{name}: a {kind} without its opt-in component")

    statefulsets = by_kind(docs, "StatefulSet")
    if is_dev:
        redis = statefulsets.get("redis")
        p.check(redis is not None, f"{name}: no Redis StatefulSet")
        if redis is not None:
            p.check(bool(redis["spec"].get("volumeClaimTemplates")), f"{name}: Redis has no volumeClaimTemplates")
            rc = redis["spec"]["template"]["spec"]["containers"][0]
            args = rc.get("args", [])
            p.check("--requirepass" in args, f"{name}: Redis without a password")
            p.check("noeviction" in args, f"{name}: Redis not noeviction")
            p.check("--appendonly" in args and args[args.index("--appendonly") + 1] == "yes", f"{name}: Redis not append-only")
            mounts = {m["name"] for m in rc.get("volumeMounts", [])}
            claims = {t["metadata"]["name"] for t in redis["spec"].get("volumeClaimTemplates", [])}
            p.check("data" in mounts and "data" in claims, f"{name}: Redis /data is not the PVC")
            p.check(not any(v.get("emptyDir") is not None for v in redis["spec"]["template"]["spec"].get("volumes", [])), f"{name}: Redis data on an emptyDir")
        redis_secret = [s for s in by_kind(docs, "Secret") if s.startswith("switchboard-redis")]
        p.check(len(redis_secret) == 1, f"{name}: no generated switchboard-redis Secret")
    else:
        p.check(not statefulsets, f"{name}: prod renders a StatefulSet (its Redis is external)")
        p.check(not by_kind(docs, "Secret"), f"{name}: prod renders Secrets (the operator creates them)")
        ingresses = by_kind(docs, "Ingress")
        p.check(len(ingresses) == 1, f"{name}: no Ingress")
        for ing in ingresses.values():
            ann = ing["metadata"].get("annotations", {})
            for key in ("proxy-read-timeout", "proxy-send-timeout"):
                p.check(ann.get(f"nginx.ingress.kubernetes.io/{key}") == "3600", f"{name}: Ingress {key} is not 3600")
            p.check(bool(ing["spec"].get("tls")), f"{name}: Ingress without TLS")
            backends = {path["backend"]["service"]["name"] for rule in ing["spec"]["rules"] for path in rule["http"]["paths"]}
            p.check(backends <= set(services), f"{name}: Ingress routes to missing Services {backends - set(services)}")


def check_kustomize(p: Problems) -> None:
    for name, overlay, components in RENDERS:
        docs = render(name, overlay, components, p)
        if docs is None:
            continue
        validate_schemas(name, docs, p)
        check_invariants(name, docs, p)


# ---- rules --------------------------------------------------------------------------------------


def rule_groups() -> list[dict]:
    rule = yaml.safe_load((ROOT / "k8s/components/monitoring/prometheusrule.yaml").read_text())
    return rule["spec"]["groups"]


def check_rules(p: Problems) -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    groups = rule_groups()
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    for required in (
        "SwitchboardGatewayRedisUnreachable",
        "SwitchboardWorkerRedisUnreachable",
        "SwitchboardSlowConsumerClosesRising",
        "SwitchboardDeadLettersGrowing",
        "SwitchboardToolCallTimeouts",
        "SwitchboardNoWorkersForTool",
    ):
        p.check(required in names, f"prometheusrule.yaml: no alert {required}")
    for a in alerts:
        for key in ("summary", "description", "runbook"):
            p.check(bool(a.get("annotations", {}).get(key)), f"alert {a['alert']}: no {key} annotation")
        p.check(a.get("labels", {}).get("severity") in ("warning", "critical"), f"alert {a['alert']}: no severity")
        unknown = metric_names(a["expr"]) - KNOWN_METRICS
        p.check(not unknown, f"alert {a['alert']}: unknown metrics {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
        shutil.copy(ROOT / "tests/deploy/alerts.test.yaml", Path(tmp, "alerts.test.yaml"))
        result = run([promtool, "check", "rules", "rules.yaml"], cwd=Path(tmp))
        p.check(result.returncode == 0, f"promtool check rules failed:\n{result.stdout}{result.stderr}")
        result = run([promtool, "test", "rules", "alerts.test.yaml"], cwd=Path(tmp))
        p.check(result.returncode == 0, f"promtool test rules failed:\n{result.stdout}{result.stderr}")
        # The compose Prometheus: its config, and its copy of the same groups.
        shutil.copy(ROOT / "deploy/prometheus.yml", Path(tmp, "prometheus.yml"))
        shutil.copy(ROOT / "deploy/prometheus-rules.yml", Path(tmp, "rules.yml"))
        result = run([promtool, "check", "config", "prometheus.yml"], cwd=Path(tmp))
        p.check(result.returncode == 0, f"promtool check config deploy/prometheus.yml failed:\n{result.stdout}{result.stderr}")
    copy = yaml.safe_load((ROOT / "deploy/prometheus-rules.yml").read_text())
    p.check(
        copy == {"groups": groups},
        "deploy/prometheus-rules.yml differs from the groups of k8s/components/monitoring/prometheusrule.yaml: copy them over",
    )


# ---- dashboard ----------------------------------------------------------------------------------


def panels_of(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def check_dashboard(p: Problems) -> None:
    path = ROOT / "k8s/components/monitoring/dashboard.json"
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        p.add(f"{path}: not JSON: {e}")
        return
    p.check(dashboard.get("uid") == "switchboard", "dashboard: uid is not `switchboard`")
    used: set[str] = set()
    ids = []
    for panel in panels_of(dashboard):
        ids.append(panel.get("id"))
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            p.check(bool(expr), f"dashboard panel {panel.get('title')}: a target without expr")
            names = metric_names(expr)
            unknown = names - KNOWN_METRICS
            p.check(not unknown, f"dashboard panel {panel.get('title')}: unknown metrics {sorted(unknown)}")
            used |= names
    p.check(len(ids) == len(set(ids)), "dashboard: panel ids repeat")
    for required in (
        "switchboard_connections",
        "switchboard_deliveries_total",
        "switchboard_delivery_latency_seconds_bucket",
        "switchboard_tool_calls_total",
        "switchboard_tool_call_duration_seconds_bucket",
        "switchboard_redis_operation_duration_seconds_bucket",
        "switchboard_queue_pending_jobs",
        "switchboard_queue_lag_jobs",
        "switchboard_dead_letters_total",
        "switchboard_slow_consumer_closes_total",
        "switchboard_closes_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        p.check(required in used, f"dashboard: no panel queries {required}")
    # The ConfigMap the monitoring component generates carries the same JSON.
    docs = render("dev+monitoring", "k8s/overlays/dev", ["k8s/components/monitoring"], p) or []
    shipped = [c for c in docs if c.get("kind") == "ConfigMap" and c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    p.check(len(shipped) == 1, "the monitoring component ships no dashboard ConfigMap")
    for c in shipped:
        p.check(json.loads(c["data"]["switchboard.json"]) == dashboard, "the dashboard ConfigMap differs from dashboard.json")


# ---- dockerfile ---------------------------------------------------------------------------------


def workspace() -> dict:
    cargo = shutil.which("cargo")
    if cargo is None:
        sys.exit("check.py: cargo is not on PATH")
    result = run([cargo, "metadata", "--no-deps", "--format-version", "1", "--offline"], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"cargo metadata failed:\n{result.stderr}")
    return json.loads(result.stdout)


def host_triple() -> str:
    """The host's target triple (`rustc -vV`): the platform whose dependencies a build fetches."""
    result = run(["rustc", "-vV"])
    match = re.search(r"^host: (\S+)$", result.stdout, re.M)
    if result.returncode != 0 or match is None:
        sys.exit(f"rustc -vV failed:\n{result.stderr}")
    return match.group(1)


def check_dockerfile(p: Problems) -> None:
    text = (ROOT / "Dockerfile").read_text()
    builder = text.split("\nFROM ", 2)[1]  # the builder stage (up to the runtime's FROM)
    manifests = set(re.findall(r"^COPY (\S+)/Cargo\.toml \1/$", builder, re.M))
    sources = set(re.findall(r"^COPY (\S+) \1$", builder, re.M))
    stub_block = re.search(r"for f in (.*?); do", builder, re.S)
    stubs = set(stub_block.group(1).replace("\\", " ").split()) if stub_block else set()
    p.check(bool(stubs), "Dockerfile: no stub list (`for f in ...; do`)")
    touched = re.search(r"find (.*?) -type f -exec touch", builder)
    p.check(touched is not None and set(touched.group(1).split()) == sources, "Dockerfile: the touch list is not the copied source list")

    meta = workspace()
    root = Path(meta["workspace_root"])
    members = {}
    for package in meta["packages"]:
        if package["id"] in meta["workspace_members"]:
            members[package["name"]] = package
    member_dirs = {name: str(Path(pk["manifest_path"]).parent.relative_to(root)) for name, pk in members.items()}
    p.check(manifests == set(member_dirs.values()), f"Dockerfile: manifests copied {sorted(manifests)} but the workspace members are {sorted(member_dirs.values())}")

    # Every lib and bin target, and every target a manifest declares explicitly, needs a stub.
    needed = set()
    for name, package in members.items():
        declared = tomllib.loads(Path(package["manifest_path"]).read_text())
        explicit = {t.get("name") for section in ("bin", "test", "bench", "example") for t in declared.get(section, [])}
        for target in package["targets"]:
            kinds = set(target["kind"])
            if kinds & {"lib", "bin", "proc-macro", "custom-build"} or target["name"] in explicit:
                needed.add(str(Path(target["src_path"]).relative_to(root)))
    p.check(stubs == needed, f"Dockerfile: stubs {sorted(stubs)} but the workspace needs {sorted(needed)}")

    # Step 2 copies every member the binary depends on (path dependencies, transitively).
    def path_deps(name: str) -> set[str]:
        return {d["name"] for d in members[name]["dependencies"] if d.get("path") and d["kind"] is None}

    required, todo = set(), ["switchboard"]
    while todo:
        name = todo.pop()
        if name in required:
            continue
        required.add(name)
        todo.extend(path_deps(name))
    required_dirs = {member_dirs[n] for n in required}
    copied = lambda d: any(d == s or d.startswith(s + "/") for s in sources)  # noqa: E731
    missing = sorted(d for d in required_dirs if not copied(d))
    p.check(not missing, f"Dockerfile: `switchboard` needs the sources of {missing}, which step 2 does not copy")

    # The stub layout loads as a workspace with the locked dependencies (what step 1 builds).
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for entry in manifests | sources | {"Cargo.toml", "Cargo.lock"}:
        p.check(not any(entry == i.rstrip("/") for i in ignore), f".dockerignore excludes {entry}, which the Dockerfile copies")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "Cargo.toml", tmp)
        shutil.copy(ROOT / "Cargo.lock", tmp)
        for d in manifests:
            Path(tmp, d).mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / d / "Cargo.toml", Path(tmp, d))
        for f in stubs:
            Path(tmp, f).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, f).write_text("fn main() {}\n" if f.endswith("main.rs") else "")
        env = dict(os.environ, CARGO_TARGET_DIR=str(Path(tmp, "target")))
        result = run(["cargo", "metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", host_triple()], cwd=Path(tmp), env=env)
        p.check(result.returncode == 0, f"Dockerfile step 1's layout does not load (cargo metadata --locked --offline --filter-platform):\n{result.stderr}")

    runtime = text.split("\nFROM ", 2)[2]
    p.check(re.search(r"apt-get install[^\n]*\btini\b", runtime) is not None, "Dockerfile: tini is not installed")
    p.check('ENTRYPOINT ["tini", "--", "switchboard"]' in runtime, "Dockerfile: tini is not PID 1")
    p.check("CARGO_PROFILE_RELEASE_STRIP=symbols" in builder or re.search(r"\bstrip\b.*switchboard", builder) is not None, "Dockerfile: the binary is not stripped")
    p.check(re.search(r"^USER 10001", runtime, re.M) is not None, "Dockerfile: not USER 10001")


# ---- nginx --------------------------------------------------------------------------------------


def check_nginx(p: Problems) -> None:
    nginx = tool("nginx", "apt-get install nginx-light")
    conf = (ROOT / "deploy/nginx.conf").read_text()
    formats = re.findall(r"log_format\s+(\S+)\s+((?:'[^']*'\s*)+);", conf)
    p.check(bool(formats), "nginx.conf: no log_format")
    for name, body in formats:
        for variable in re.findall(r"\$[a-z_]+", body):
            p.check(variable not in ("$request", "$request_uri", "$args", "$query_string") and not variable.startswith("$arg_"), f"nginx.conf: log_format {name} logs {variable}, which carries the query string (tokens)")
    for target, fmt in re.findall(r"access_log\s+(\S+)(?:\s+(\S+?))?\s*;", conf):
        p.check(target == "off" or fmt in {n for n, _ in formats}, f"nginx.conf: access_log {target} uses the default format (it logs the query string)")
    p.check(re.search(r"proxy_read_timeout\s+(1h|3600s?)\s*;", conf) is not None, "nginx.conf: /ws read timeout is not 1h")
    with tempfile.TemporaryDirectory() as tmp:
        # The compose service names do not resolve here.
        Path(tmp, "nginx.conf").write_text(re.sub(r"server\s+gateway-\d+:8080", "server 127.0.0.1:8080", conf))
        result = run([nginx, "-t", "-q", "-c", f"{tmp}/nginx.conf", "-p", tmp, "-g", f"pid {tmp}/nginx.pid;"])
        p.check(result.returncode == 0, f"nginx -t failed:\n{result.stderr}")


# ---- envnames -----------------------------------------------------------------------------------

def check_envnames(p: Problems) -> None:
    meta = workspace()
    root = Path(meta["workspace_root"])
    known: set[str] = set()
    for package in meta["packages"]:
        if package["id"] not in meta["workspace_members"]:
            continue
        for source in Path(package["manifest_path"]).parent.rglob("*.rs"):
            if "target" in source.relative_to(root).parts:
                continue
            known |= set(re.findall(r'"(SWITCHBOARD_[A-Z0-9_]+)"', source.read_text(errors="replace")))
    p.check(len(known) > 50, f"found only {len(known)} SWITCHBOARD_* names in the sources")
    given: dict[str, set[str]] = {}

    def note(where: str, names: object) -> None:
        for name in re.findall(r"\b(SWITCHBOARD_[A-Z0-9_]+)\b", json.dumps(names)):
            given.setdefault(name, set()).add(where)

    for name, overlay, components in RENDERS:
        for doc in render(name, overlay, components, p) or []:
            if doc.get("kind") == "Deployment":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    note(f"{name}/{doc['metadata']['name']}", [e["name"] for e in c.get("env", [])])
            if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].startswith("switchboard-config"):
                note(f"{name}/ConfigMap", list(doc.get("data", {})))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for key, value in compose.items():
        if key.startswith("x-") and key.endswith("-env"):
            note(f"docker-compose.yml/{key}", list(value))
    for sname, service in compose.get("services", {}).items():
        if sname.startswith(("gateway", "worker")):
            note(f"docker-compose.yml/{sname}", list(service.get("environment", {})))
    note("Dockerfile", re.findall(r"^ENV (SWITCHBOARD_[A-Z0-9_]+)=", (ROOT / "Dockerfile").read_text(), re.M))
    p.check(len(given) > 10, f"found only {len(given)} variables in the deployment files")
    for name, places in sorted(given.items()):
        if name in known:
            continue
        p.add(f"{name} (in {', '.join(sorted(places))}) is read nowhere in the sources: a typo?")


CHECKS = {
    "compose": check_compose,
    "kustomize": check_kustomize,
    "rules": check_rules,
    "dashboard": check_dashboard,
    "dockerfile": check_dockerfile,
    "nginx": check_nginx,
    "envnames": check_envnames,
}


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        print(f"usage: check.py {{{'|'.join(CHECKS)}}}", file=sys.stderr)
        return 2
    problems = Problems()
    CHECKS[sys.argv[1]](problems)
    for item in problems.items:
        print(f"- {item}", file=sys.stderr)
    if problems.items:
        print(f"{sys.argv[1]}: {len(problems.items)} problem(s)", file=sys.stderr)
        return 1
    print(f"{sys.argv[1]}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
