"""The deployment manifests (deploy/compose, deploy/prometheus/prometheus.yml, deploy/grafana/provisioning,
deploy/k8s) checked by the real tools, and what a schema cannot say checked against the code.

* compose.yaml against the Compose specification (``check-jsonschema --builtin-schema vendor.compose-spec``);
* prometheus.yml with ``promtool check config`` (Debian's ``prometheus`` package), with the rule files
  that exist in deploy/prometheus/rules/;
* deploy/k8s rendered with kustomize (``make deploy-tools``: tools/bin/kustomize), the standard objects
  validated by ``kubernetes-validate`` (strict), the KEDA objects against the openAPIV3Schema of KEDA's
  own CRDs (``make deploy-tools``: tools/keda-crds/) with ``jsonschema``, unknown fields refused as
  ``kubectl --validate=strict`` does;
* every validator is shown to fail on a broken copy;
* semantics: RISKSTREAM_* names are real settings and the values load, no secret in plain text, host
  ports on loopback, probes on the worker's endpoints, the KEDA trigger on the worker's group and input
  topics with max replicas = their partitions (stream/topics.py).

A missing tool fails the test in CI (``CI=true``) and skips it with the command to run otherwise.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from stream.core.policy.config import load_policy_config
from stream.settings import Settings, host_port, load_settings
from stream.topics import topic_specs
from tests.tools import tool_missing

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules"
GRAFANA = ROOT / "deploy" / "grafana"
K8S = ROOT / "deploy" / "k8s"
K8S_TREES = ["base", "overlays/production"]
POLICY = ROOT / "stream" / "config" / "policy.toml"
K8S_VERSION = "1.34.0"  # the Kubernetes version whose schemas kubernetes-validate checks against
SETTING_NAMES = {f"RISKSTREAM_{name.upper()}" for name in Settings.model_fields}
SECRET_SETTINGS = {f"RISKSTREAM_{name.upper()}" for name, f in Settings.model_fields.items()
                   if "SecretStr" in str(f.annotation)}
_SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY($|_)|CREDENTIAL", re.IGNORECASE)
_INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[?-][^}]*)?\}$")


def _makefile_var(name: str) -> str:
    m = re.search(rf"^{name} := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert m, f"{name} not in the Makefile"
    return m.group(1)


# -- compose -------------------------------------------------------------------------------------------

def _check_jsonschema() -> str:
    beside = Path(sys.executable).with_name("check-jsonschema")
    tool = str(beside) if beside.exists() else shutil.which("check-jsonschema")
    if tool is None:
        tool_missing("check-jsonschema not installed (pip install -e '.[dev]')")
    assert tool is not None
    return tool


def _compose_schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())  # merges the x-worker anchors
    assert isinstance(doc, dict)
    return json.loads(json.dumps(doc))  # each service its own objects (YAML aliases share them)


def _worker_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if s.get("command") == ["worker"]}


def test_compose_file_matches_the_compose_specification() -> None:
    r = _compose_schema_check(COMPOSE)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("mutation", ["bad depends_on condition", "unknown service key", "ports not a list"])
def test_the_compose_schema_check_fails_on_a_broken_copy(tmp_path: Path, mutation: str) -> None:
    doc = _compose()
    worker = doc["services"]["worker-1"]
    if mutation == "bad depends_on condition":
        worker["depends_on"]["topics"]["condition"] = "when_topics_exist"
    elif mutation == "unknown service key":
        worker["healthchek"] = worker.pop("healthcheck")
    else:
        worker["ports"] = 8081
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(doc))
    r = _compose_schema_check(broken)
    assert r.returncode != 0, f"check-jsonschema accepted a compose file with {mutation}: {r.stdout}"
    assert "worker-1" in r.stdout + r.stderr


def test_compose_services_have_images_kraft_kafka_and_redis_aof() -> None:
    doc = _compose()
    assert {"kafka", "redis", "topics", "prometheus", "grafana"} <= set(doc["services"])
    assert len(_worker_services(doc)) == 2
    for name, svc in doc["services"].items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        if "build" in svc:
            assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() \
                == ROOT / "Dockerfile", name
    kafka = doc["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9.")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert any(v.endswith(":" + kafka["environment"]["KAFKA_LOG_DIRS"]) for v in kafka["volumes"])
    redis = doc["services"]["redis"]
    assert "--appendonly yes" in " ".join(redis["command"]) and any(v.endswith(":/data") for v in redis["volumes"])


def test_compose_start_order_and_health_checks() -> None:
    doc = _compose()
    services = doc["services"]
    topics = services["topics"]
    assert topics["command"] == ["topics", "create"] and topics["image"] == "riskstream:local"
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy" and "healthcheck" in services["kafka"]
    assert services["redis"]["healthcheck"]["test"]
    for name, w in _worker_services(doc).items():
        assert w["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
        assert w["depends_on"]["redis"]["condition"] == "service_healthy", name
        _, port = host_port(w["environment"]["RISKSTREAM_HTTP_ADDR"])
        probe = " ".join(w["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in probe, name
        assert any(p.endswith(f":{port}") for p in w["ports"]), f"{name}: HTTP port {port} not published"
        policy = w["environment"]["RISKSTREAM_POLICY_CONFIG"]
        policy_mount = [v for v in w["volumes"] if v.endswith(f":{policy}:ro")]
        assert policy_mount and (COMPOSE.parent / policy_mount[0].split(":")[0]).resolve() == POLICY


def test_compose_worker_environment_names_real_settings_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every RISKSTREAM_* name is a Settings field, and the values (interpolations filled) load."""
    for name, svc in _compose()["services"].items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        ours = {k: v for k, v in env.items() if k.startswith("RISKSTREAM_")}
        if svc.get("image") != "riskstream:local":
            assert not ours, f"{name}: RISKSTREAM_* on a service that is not riskstream"
            continue
        assert ours, name
        assert set(ours) <= SETTING_NAMES, f"{name}: not settings: {sorted(set(ours) - SETTING_NAMES)}"
        for k in list(os.environ):
            if k.startswith("RISKSTREAM_"):
                monkeypatch.delenv(k)
        for k, v in ours.items():
            monkeypatch.setenv(k, re.sub(r"\$\{[^}]*\}", "test-password", v))
        s = load_settings()
        assert s.redis_url.get_secret_value() == "redis://:test-password@redis:6379/0"
        assert s.kafka_bootstrap == "kafka:9092" and s.partitions == 6


def _plain_secrets_and_open_ports(doc: dict[str, Any]) -> list[str]:
    """What the compose file must not have: a literal password (environment, URL user info,
    redis --requirepass) or a port published beyond loopback."""
    found = []
    for name, svc in doc["services"].items():
        for k, v in (svc.get("environment") or {}).items():
            v = str(v)
            if _SECRETISH.search(k) or k in SECRET_SETTINGS or "://" in v:
                password = urlsplit(v).password if "://" in v else v
                if password is not None and not _INTERPOLATION.match(password):
                    found.append(f"{name}: {k} holds a literal secret; use ${{VAR:?…}} from the environment")
        for arg in svc.get("command") or []:
            if re.search(r"--requirepass\s+(?![\"']?\$\$)", str(arg)):
                found.append(f"{name}: literal --requirepass")
        for port in svc.get("ports", []):
            if not (isinstance(port, str) and port.startswith("127.0.0.1:")):
                found.append(f"{name}: port {port!r} not on loopback")
    return found


def test_compose_has_no_secret_in_plain_text_and_loopback_ports_only() -> None:
    assert _plain_secrets_and_open_ports(_compose()) == []
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/compose/.env"], cwd=ROOT).returncode
    assert ignored == 0, "deploy/compose/.env (the passwords) must be ignored by git"
    example = (COMPOSE.parent / ".env.example").read_text()
    assert all(not line.split("=", 1)[1] for line in example.splitlines() if "=" in line and not line.startswith("#"))


@pytest.mark.parametrize("mutation", ["literal Redis password", "password in the Redis URL", "literal requirepass",
                                      "port on every interface"])
def test_the_secret_and_port_check_finds_a_broken_copy(mutation: str) -> None:
    doc = _compose()
    services = doc["services"]
    if mutation == "literal Redis password":
        services["redis"]["environment"]["REDIS_PASSWORD"] = "hunter2hunter2"
    elif mutation == "password in the Redis URL":
        services["worker-2"]["environment"]["RISKSTREAM_REDIS_URL"] = "redis://:hunter2@redis:6379/0"
    elif mutation == "literal requirepass":
        services["redis"]["command"] = ["redis-server", "--appendonly", "yes", "--requirepass hunter2"]
    else:
        services["grafana"]["ports"] = ["3000:3000"]
    assert len(_plain_secrets_and_open_ports(doc)) == 1, mutation


def test_compose_mounts_the_prometheus_and_grafana_files() -> None:
    services = _compose()["services"]

    def mounts(svc: str) -> dict[str, Path]:
        return {v.split(":")[1]: (COMPOSE.parent / v.split(":")[0]).resolve()
                for v in services[svc]["volumes"] if v.startswith(".")}

    prom = mounts("prometheus")
    assert prom["/etc/prometheus/prometheus.yml"] == PROMETHEUS
    assert prom["/etc/prometheus/rules"] == RULES
    graf = mounts("grafana")
    assert graf["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    assert graf["/var/lib/grafana/dashboards"] == GRAFANA / "dashboards"
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = ds["datasources"]
    assert source["type"] == "prometheus" and urlsplit(source["url"]).hostname == "prometheus"
    assert urlsplit(source["url"]).port == 9090
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "riskstream.yml").read_text())
    [provider] = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


# -- prometheus.yml ---------------------------------------------------------------------------------------

def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        tool_missing("promtool not installed (apt-get install prometheus)")
    assert tool is not None
    return tool


def _promtool_check(config_text: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check config`` on a copy whose rule_files point at a copy of deploy/prometheus/rules/
    (the compose mount point /etc/prometheus/rules does not exist here)."""
    rules = tmp / "rules"
    rules.mkdir()
    found = sorted(RULES.glob("*.yml"))
    for f in found:
        shutil.copy(f, rules / f.name)
    if not found:  # the rules are written separately; until then the glob still loads a real file
        (rules / "minimal.yml").write_text(
            "groups:\n  - name: minimal\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up)\n")
    cfg = tmp / "prometheus.yml"
    cfg.write_text(config_text.replace("/etc/prometheus/rules/", f"{rules}/"))
    return subprocess.run([_promtool(), "check", "config", str(cfg)], capture_output=True, text=True, timeout=60)


def test_prometheus_config_passes_promtool_with_the_rule_files(tmp_path: Path) -> None:
    text = PROMETHEUS.read_text()
    cfg = yaml.safe_load(text)
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    r = _promtool_check(text, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    n = max(1, len(list(RULES.glob("*.yml"))))
    assert f"SUCCESS: {n} rule files found" in r.stdout + r.stderr, r.stdout + r.stderr


def test_prometheus_scrapes_every_compose_worker_on_its_http_port() -> None:
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    [job] = [j for j in cfg["scrape_configs"] if j["job_name"] == "riskstream"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    workers = _worker_services(_compose())
    want = {f"{n}:{host_port(w['environment']['RISKSTREAM_HTTP_ADDR'])[1]}" for n, w in workers.items()}
    assert targets == want


@pytest.mark.parametrize("mutation", ["bad duration", "unknown key"])
def test_promtool_fails_on_a_broken_config(tmp_path: Path, mutation: str) -> None:
    text = PROMETHEUS.read_text()
    text = (text.replace("scrape_interval: 15s", "scrape_interval: fast") if mutation == "bad duration"
            else text.replace("scrape_configs:", "scrape_cofigs:"))
    assert text != PROMETHEUS.read_text()
    r = _promtool_check(text, tmp_path)
    assert r.returncode != 0, f"promtool accepted a config with a {mutation}: {r.stdout}"


# -- Kubernetes: kustomize -------------------------------------------------------------------------------

def _kustomize() -> str:
    want = _makefile_var("KUSTOMIZE_VERSION")
    tool = ROOT / "tools" / "bin" / "kustomize"
    if not tool.exists():
        tool_missing(f"kustomize {want} not built: run `make deploy-tools` (Go needed)")
    got = subprocess.run([str(tool), "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    assert got == want, f"tools/bin/kustomize is {got}, the Makefile pins {want}: run `make deploy-tools`"
    return str(tool)


def _build(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_kustomize(), "build", str(tree)], capture_output=True, text=True, timeout=120)


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def _render(tree: str) -> list[dict[str, Any]]:
    if tree not in _RENDERED:
        r = _build(K8S / tree)
        assert r.returncode == 0, r.stderr
        _RENDERED[tree] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return copy.deepcopy(_RENDERED[tree])


def _one(docs: list[dict[str, Any]], kind: str, name_prefix: str = "") -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)]
    return doc


@pytest.mark.parametrize("tree", K8S_TREES)
def test_kustomize_renders(tree: str) -> None:
    kinds = sorted(d["kind"] for d in _render(tree))
    assert {"ConfigMap", "Deployment", "PodDisruptionBudget", "ScaledObject", "Service", "ServiceAccount",
            "TriggerAuthentication"} <= set(kinds)
    assert "Secret" not in kinds  # referenced, never committed


def test_kustomize_fails_on_a_broken_kustomization(tmp_path: Path) -> None:
    broken = tmp_path / "base"
    shutil.copytree(K8S / "base", broken)
    k = broken / "kustomization.yaml"
    k.write_text(k.read_text().replace("  - pdb.yaml\n", "  - pdb.yaml\n  - no-such-file.yaml\n"))
    r = _build(broken)
    assert r.returncode != 0 and "no-such-file.yaml" in r.stderr, r.stderr


# -- Kubernetes: kubernetes-validate (standard objects) -----------------------------------------------------

def _k8s_validate(doc: dict[str, Any]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        tool_missing("kubernetes-validate not installed (pip install -e '.[dev]')")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("tree", K8S_TREES)
def test_standard_objects_pass_kubernetes_validate(tree: str) -> None:
    standard = [d for d in _render(tree) if not d["apiVersion"].startswith("keda.sh/")]
    assert len(standard) >= 6
    for doc in standard:
        _k8s_validate(doc)


@pytest.mark.parametrize("mutation", ["unknown probe field", "replicas not a number", "unknown security field"])
def test_kubernetes_validate_fails_on_a_broken_deployment(mutation: str) -> None:
    import kubernetes_validate

    dep = _one(_render("base"), "Deployment")
    worker = dep["spec"]["template"]["spec"]["containers"][0]
    if mutation == "unknown probe field":
        worker["livenessProbe"]["httpGet"]["prot"] = worker["livenessProbe"]["httpGet"].pop("port")
    elif mutation == "replicas not a number":
        dep["spec"]["replicas"] = "two"
    else:
        worker["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_validate(dep)


# -- Kubernetes: the KEDA objects against KEDA's CRD schemas ------------------------------------------------

def _strict(schema: Any) -> Any:
    """The CRD schema refusing unknown fields where the API server would prune them (kubectl's
    --validate=strict): objects with ``properties`` and no ``additionalProperties`` or
    ``x-kubernetes-preserve-unknown-fields`` get ``additionalProperties: false``."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _keda_schema(kind: str) -> dict[str, Any]:
    version = _makefile_var("KEDA_VERSION")
    path = ROOT / "tools" / "keda-crds" / version / f"keda.sh_{kind.lower()}s.yaml"
    if not path.exists():
        tool_missing(f"KEDA {version} CRDs not fetched: run `make deploy-tools` (Go needed)")
    crd = yaml.safe_load(path.read_text())
    assert crd["spec"]["names"]["kind"] == kind
    [v] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = _strict(v["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # checked by the API server, not the CRD
    return schema


def _keda_kafka_metadata_keys() -> dict[str, set[str] | None]:
    """The trigger metadata keys of KEDA's Kafka scaler (and their enums), from the field tags of
    its source in the same pinned module (``keda:"name=lagThreshold,order=triggerMetadata,..."``)."""
    version = _makefile_var("KEDA_VERSION")
    src = ROOT / "tools" / "keda-crds" / version / "kafka_scaler.go"
    if not src.exists():
        tool_missing(f"KEDA {version} sources not fetched: run `make deploy-tools` (Go needed)")
    keys: dict[str, set[str] | None] = {}
    for tag in re.findall(r'keda:"([^"]+)"', src.read_text()):
        parts = dict(p.split("=", 1) for p in tag.split(",") if "=" in p)
        if "triggerMetadata" in parts.get("order", ""):
            keys[parts["name"]] = set(parts["enum"].split(";")) if "enum" in parts else None
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= set(keys)
    return keys


def _keda_validate(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    jsonschema.validate(doc, _keda_schema(doc["kind"]), cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("tree", K8S_TREES)
def test_keda_objects_match_the_keda_crd_schemas(tree: str) -> None:
    keda = [d for d in _render(tree) if d["apiVersion"].startswith("keda.sh/")]
    assert sorted(d["kind"] for d in keda) == ["ScaledObject", "TriggerAuthentication"]
    for doc in keda:
        _keda_validate(doc)


@pytest.mark.parametrize("mutation", ["max replicas not a number", "unknown spec field", "trigger without type",
                                      "auth parameter missing"])
def test_the_keda_schema_check_fails_on_a_broken_copy(mutation: str) -> None:
    docs = _render("base")
    so, auth = _one(docs, "ScaledObject"), _one(docs, "TriggerAuthentication")
    doc = so
    if mutation == "max replicas not a number":
        so["spec"]["maxReplicaCount"] = "six"
    elif mutation == "unknown spec field":
        so["spec"]["maxReplicas"] = so["spec"].pop("maxReplicaCount")
    elif mutation == "trigger without type":
        del so["spec"]["triggers"][0]["type"]
    else:
        del auth["spec"]["secretTargetRef"][0]["parameter"]
        doc = auth
    with pytest.raises(jsonschema.ValidationError):
        _keda_validate(doc)


# -- Kubernetes: semantics ----------------------------------------------------------------------------------

def _dockerfile() -> tuple[int, str]:
    text = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"^USER (\d+)", text, re.MULTILINE)
    cache = re.search(r"NUMBA_CACHE_DIR=(\S+)", text)
    assert uid and cache
    return int(uid.group(1)), cache.group(1)


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def _worker(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [c] = [c for c in _pod(docs)["containers"] if c["name"] == "worker"]
    return c


def _config(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = _one(docs, "ConfigMap", "riskstream-config-")["data"]
    return data


@pytest.mark.parametrize("tree", K8S_TREES)
def test_deployment_probes_resources_and_security(tree: str) -> None:
    docs = _render(tree)
    pod, worker, config = _pod(docs), _worker(docs), _config(docs)
    uid, numba_cache = _dockerfile()
    _, http_port = host_port(config["RISKSTREAM_HTTP_ADDR"])
    [port] = worker["ports"]
    assert port["containerPort"] == http_port and port["name"] == "http"
    for probe, path in [("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")]:
        assert worker[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}, c["name"]
        assert c["image"] == _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    for writable in ("/tmp", numba_cache):  # Faust's datadir and temp files; numba's cache
        assert "emptyDir" in volumes[mounts[writable]], writable
    [init] = pod["initContainers"]  # fills the numba emptyDir with the kernels warmed in the image
    assert init["command"][:2] == ["cp", "-a"] and init["command"][2].rstrip("/.") == numba_cache
    [m] = init["volumeMounts"]
    assert m["name"] == mounts[numba_cache] and init["command"][3].rstrip("/") == m["mountPath"]


@pytest.mark.parametrize("tree", K8S_TREES)
def test_policy_config_map_is_the_packaged_policy_and_named_by_the_setting(tree: str) -> None:
    docs = _render(tree)
    worker, config, pod = _worker(docs), _config(docs), _pod(docs)
    assert (K8S / "base" / "policy.toml").read_text() == POLICY.read_text(), \
        "deploy/k8s/base/policy.toml differs from stream/config/policy.toml"
    policy_path = Path(config["RISKSTREAM_POLICY_CONFIG"])
    cm = _one(docs, "ConfigMap", "riskstream-policy-")
    [vol] = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
    [mount] = [m for m in worker["volumeMounts"] if m["name"] == vol["name"]]
    assert Path(mount["mountPath"]) == policy_path.parent and mount["readOnly"] is True
    assert set(cm["data"]) == {policy_path.name}
    assert cm["data"][policy_path.name] == POLICY.read_text()
    assert load_policy_config(K8S / "base" / "policy.toml") == load_policy_config(POLICY)


def _settings_from_manifests(docs: list[dict[str, Any]], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a worker pod would load: the ConfigMap, secretKeyRefs filled with test values,
    and the mounted PEM files replaced by local files of the right kind."""
    worker, config = _worker(docs), _config(docs)
    for k in list(os.environ):
        if k.startswith("RISKSTREAM_"):
            monkeypatch.delenv(k)
    for k, v in config.items():
        if k.endswith("_LOCATION"):
            pem = tmp / Path(v).name
            pem.write_text("-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n")
            v = str(pem)
        monkeypatch.setenv(k, v)
    for e in worker["env"]:
        ref = e["valueFrom"]["secretKeyRef"]
        if ref.get("optional"):
            continue
        value = "rediss://riskstream:test@redis.example:6380/0" if e["name"] == "RISKSTREAM_REDIS_URL" else "test"
        monkeypatch.setenv(e["name"], value)
    return load_settings()


@pytest.mark.parametrize("tree", K8S_TREES)
def test_worker_environment_names_real_settings_and_secrets_come_from_secrets(
        tree: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render(tree)
    worker, config = _worker(docs), _config(docs)
    names = set(config) | {e["name"] for e in worker["env"]}
    assert names <= SETTING_NAMES, f"not settings: {sorted(names - SETTING_NAMES)}"
    for k in config:
        assert not _SECRETISH.search(k) and k not in SECRET_SETTINGS, f"{k} in a ConfigMap"
    for e in worker["env"]:
        assert "value" not in e and "secretKeyRef" in e["valueFrom"], e["name"]
    assert {"RISKSTREAM_KAFKA_SASL_PASSWORD", "RISKSTREAM_REDIS_URL"} <= {e["name"] for e in worker["env"]}
    assert [f["configMapRef"]["name"] for f in worker["envFrom"]] == [_one(docs, "ConfigMap", "riskstream-config-")
                                                                       ["metadata"]["name"]]
    s = _settings_from_manifests(docs, tmp_path, monkeypatch)
    assert s.kafka_security_protocol == "SASL_SSL" and s.redis_tls
    tls_volume = [v for v in _pod(docs)["volumes"] if "secret" in v]
    [tls_mount] = [m for m in worker["volumeMounts"] if m["name"] == tls_volume[0]["name"]]
    for k, v in config.items():
        if k.endswith("_LOCATION"):
            assert Path(v).parent == Path(tls_mount["mountPath"]), k


@pytest.mark.parametrize("tree", K8S_TREES)
def test_keda_scales_on_the_workers_group_and_input_topics_up_to_their_partitions(
        tree: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render(tree)
    s = _settings_from_manifests(docs, tmp_path, monkeypatch)
    dep, so, auth = _one(docs, "Deployment"), _one(docs, "ScaledObject"), _one(docs, "TriggerAuthentication")
    inputs = {t.name: t.partitions for t in topic_specs(s) if t.name in s.input_kinds}
    assert set(inputs) == {s.clicks_topic, s.views_topic}
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert spec["maxReplicaCount"] == max(inputs.values()) == s.partitions
    assert spec["minReplicaCount"] == dep["spec"]["replicas"] <= spec["maxReplicaCount"]
    triggers = spec["triggers"]
    assert {t["metadata"]["topic"] for t in triggers} == set(inputs) and len(triggers) == len(inputs)
    sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    keys = _keda_kafka_metadata_keys()
    for t in triggers:
        md = t["metadata"]
        assert t["type"] == "kafka"
        for k, v in md.items():  # names and enums as KEDA's Kafka scaler parses them
            assert k in keys, f"{k!r} is not a metadata key of KEDA's Kafka scaler"
            assert keys[k] is None or v in keys[k], f"{k}: {v!r} not one of {keys[k]}"
        assert md["consumerGroup"] == s.group_id and md["bootstrapServers"] == s.kafka_bootstrap
        assert int(md["lagThreshold"]) > 0 and md["allowIdleConsumers"] == "false"
        assert md["sasl"] == sasl[s.kafka_sasl_mechanism]
        assert md["tls"] == ("enable" if s.kafka_security_protocol.endswith("SSL") else "disable")
        assert t["authenticationRef"]["name"] == auth["metadata"]["name"]
    # KEDA reads the same Secrets as the worker
    worker_refs = {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                   for e in _worker(docs)["env"]}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs["username"] == worker_refs["RISKSTREAM_KAFKA_SASL_USERNAME"]
    assert refs["password"] == worker_refs["RISKSTREAM_KAFKA_SASL_PASSWORD"]
    [tls] = [v["secret"] for v in _pod(docs)["volumes"] if "secret" in v]
    assert refs["ca"] == (tls["secretName"], Path(_config(docs)["RISKSTREAM_KAFKA_SSL_CA_LOCATION"]).name)


@pytest.mark.parametrize("tree", K8S_TREES)
def test_pdb_and_service_select_the_worker_pods(tree: str) -> None:
    docs = _render(tree)
    dep = _one(docs, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    pdb, svc = _one(docs, "PodDisruptionBudget"), _one(docs, "Service")
    assert pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"]["maxUnavailable"] == 1
    assert svc["spec"]["selector"] == selector
    [port] = svc["spec"]["ports"]
    assert port["targetPort"] == "http"


def test_the_production_overlay_changes_namespace_image_replicas_and_resources() -> None:
    base, prod = _render("base"), _render("overlays/production")
    assert all(d["metadata"].get("namespace") == "riskstream" for d in prod if d["kind"] != "Namespace")
    assert _one(prod, "Namespace")["metadata"]["name"] == "riskstream"
    assert _worker(prod)["image"] != _worker(base)["image"] and ":" in _worker(prod)["image"]
    assert _one(prod, "Deployment")["spec"]["replicas"] > _one(base, "Deployment")["spec"]["replicas"]
    assert _worker(prod)["resources"] != _worker(base)["resources"]


def _strings(x: Any) -> Iterator[str]:
    if isinstance(x, dict):
        for v in x.values():
            yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)
    elif isinstance(x, str):
        yield x


@pytest.mark.parametrize("tree", K8S_TREES)
def test_no_credentials_in_the_rendered_manifests(tree: str) -> None:
    for doc in _render(tree):
        for text in _strings(doc):
            if "://" in text:
                assert urlsplit(text).password is None, f"{doc['kind']}: a URL with a password"


def test_the_keda_metadata_check_knows_a_misspelt_key_and_a_wrong_enum() -> None:
    keys = _keda_kafka_metadata_keys()
    assert "lagTreshold" not in keys and "consumer_group" not in keys
    assert keys["sasl"] is not None and "scram_sha_512" not in keys["sasl"] and "scram_sha512" in keys["sasl"]
    assert keys["offsetResetPolicy"] == {"latest", "earliest"}
