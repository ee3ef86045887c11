"""Ops files are valid for the tools that read them, and name only metrics Fusebox exports.

promtool (Debian's prometheus package) checks and unit-tests the alert rules; kubernetes-validate
checks the manifests against a current Kubernetes schema; the KEDA ScaledObject is checked against
KEDA's published CRD schema (vendored in tests/fixtures).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared import metrics
from shared.metrics import FleetState, QueueState, render_fleet
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return tool


def _exported_names() -> set[str]:
    """Every sample name Fusebox can export, process and fleet metrics both."""
    metrics.record_call("p", "m", 200, None, 0.1)
    metrics.record_usage("p", "m", 1, 1, 1, 0.1)
    metrics.JOBS.labels("chat", "succeeded").inc(0)
    metrics.DEFERRALS.labels("saturated").inc(0)
    metrics.RETRIES.labels("p").inc(0)
    metrics.WEBHOOKS.labels("delivered").inc(0)
    scope = {
        "scope": "p",
        "provider": "p",
        "model": None,
        "state": "open",
        "now": 1.0,
        "in_flight": 1,
        "max_concurrency": 2,
        "effective_limit": 2,
        "failure_rate": 0.0,
        "calls": 1,
        "rpm_used": 1.0,
        "tpm_used": 1.0,
        "last_transition": {"at": 0.5},
    }
    fleet = render_fleet(FleetState(QueueState(1, 1, 1.0), [scope], worker_slots=10))
    text = (metrics.render_process() + fleet).decode()
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(fusebox_[a-z_]+)", expr))


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = _promtool()
    d = DEPLOY / "prometheus"
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        proc = subprocess.run([tool, *args], cwd=d, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout + proc.stderr


def test_alerts_cover_the_incidents_ops_watch_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert names == {
        "FuseboxBreakerOpenTooLong",
        "FuseboxProviderErrorRate",
        "FuseboxQueueBacklogAge",
        "FuseboxWebhookDeadLetters",
        "FuseboxRedisUnreachable",
    }
    exported = _exported_names()
    for r in rules:
        used = _metric_names(r["expr"])
        assert used and used <= exported, (r["alert"], used - exported)


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "fusebox.json").read_text())
    exported = _exported_names()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    for e in exprs:
        used = _metric_names(e)
        assert used and used <= exported, (e, used - exported)
    titles = {p["title"] for p in dash["panels"]}
    assert {"Breaker state", "In flight vs limit", "Call latency p50 / p95"} <= titles
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "fusebox.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def _manifests() -> list[tuple[Path, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        out += [(f, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def test_kubernetes_manifests_validate_against_the_schema() -> None:
    docs = _manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "StatefulSet", "PodDisruptionBudget", "Secret", "ScaledObject"} <= kinds
    version = kubernetes_validate.latest_version()
    for _f, d in docs:
        if d["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(d, version, strict=True)  # raises on any schema violation
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_a_broken_manifest_is_refused() -> None:
    _, dep = next((f, d) for f, d in _manifests() if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(dep))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_keda_scaledobject_matches_the_published_crd_and_the_worker() -> None:
    schema = json.loads((ROOT / "tests" / "fixtures" / "keda_scaledobject_v1alpha1.schema.json").read_text())
    (so,) = [d for _, d in _manifests() if d["kind"] == "ScaledObject"]
    jsonschema.validate(so, schema["schema"])
    bad = json.loads(json.dumps(so))
    bad["spec"]["minReplicaCount"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema["schema"])
    workers = [
        d for _, d in _manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "fusebox-worker"
    ]
    assert so["spec"]["scaleTargetRef"]["name"] == workers[0]["metadata"]["name"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert _metric_names(trigger["metadata"]["query"]) == {"fusebox_workers_wanted"}


def test_worker_drains_gracefully_and_keys_come_from_secrets() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _manifests()}
    worker = docs[("Deployment", "fusebox-worker")]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= 60
    (c,) = worker["containers"]
    assert c["command"][:2] == ["fusebox", "worker"] and "--metrics-port" in c["command"]
    assert c["resources"]["requests"]["cpu"]
    assert {"secretRef": {"name": "fusebox-provider-keys"}} in c["envFrom"]
    assert not any(e["name"].endswith("_API_KEY") for e in c.get("env", []))
    secret = docs[("Secret", "fusebox-provider-keys")]
    assert all(v == "" for v in secret["stringData"].values())  # never a real key in the repo
    redis = docs[("StatefulSet", "fusebox-redis")]["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly" in redis["args"] and "yes" in redis["args"]
