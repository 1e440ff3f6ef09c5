"""The nightly schedules stay valid: the Kubernetes manifests (deploy/kubernetes/) and the VM
units (deploy/vm/) parse, the built-in Kubernetes kinds and the Ray pod templates pass the official
Kubernetes schemas, and every schedule runs `vsearch nightly` on a config of this repository that
loads with the storage the schedule provides, with no credential written in the files.

The RayJob itself (a KubeRay CRD) is not validated against its schema, which no package ships:
only the fields checked here are."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from vsearch.config import load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
VM = REPO / "deploy" / "vm"
RAYJOB_FILE = K8S / "nightly-rayjob.yaml"
CRONJOB_FILE = K8S / "nightly-cronjob.yaml"
SERVICE_FILE = VM / "vsearch-nightly.service"
TIMER_FILE = VM / "vsearch-nightly.timer"
CRON_FILE = VM / "vsearch-nightly.cron"

# The oldest Kubernetes minor version the manifests must be valid for (kubernetes-validate>=1.30
# ships its schemas).
K8S_VERSION = "1.30.0"
BUILTIN_KINDS = {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "CronJob"}
STORAGE = "s3://bucket/vsearch"
NIGHTLY = re.compile(r"vsearch nightly --config (\S+)")
# Where the RayJob's image holds this repository (nightly-rayjob.yaml's header).
IMAGE_REPO = "/app"

# KubeRay's ray.io/v1 fields these manifests may use (its API reference); a misspelt or invented
# field fails here, a field KubeRay dropped does not.
RAYJOB_SPEC_FIELDS = {
    "entrypoint", "submissionMode", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "runtimeEnvYAML", "metadata",
    "submitterPodTemplate", "submitterConfig", "entrypointNumCpus", "entrypointNumGpus",
    "entrypointResources", "suspend", "jobId", "clusterSelector",
}  # fmt: skip
RAYCLUSTER_SPEC_FIELDS = {
    "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
    "workerGroupSpecs", "headServiceAnnotations",
}  # fmt: skip
HEAD_GROUP_FIELDS = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
    "template", "scaleStrategy",
}  # fmt: skip


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _by_kind(path: Path) -> dict[str, dict[str, Any]]:
    docs = _documents(path)
    kinds = [doc["kind"] for doc in docs]
    assert len(kinds) == len(set(kinds)), f"{path.name}: one object per kind expected, got {kinds}"
    return {doc["kind"]: doc for doc in docs}


def _rayjob() -> dict[str, Any]:
    (job,) = _documents(RAYJOB_FILE)
    return job


def _ray_containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["workerGroupSpecs"]]
    return [c for t in templates for c in t["spec"]["containers"]]


def _env_names(tree: Any) -> set[str]:
    """The ${NAME} environment variables a loaded config tree refers to."""
    if isinstance(tree, dict):
        return set().union(*(_env_names(v) for v in tree.values()))
    if isinstance(tree, list):
        return set().union(*(_env_names(v) for v in tree))
    return set(re.findall(r"\$\{(\w+)\}", tree)) if isinstance(tree, str) else set()


def _check_nightly_config(config: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """``config`` (relative to the repository root) exists and loads with VSEARCH_STORAGE set;
    returns the environment variables it needs."""
    path = REPO / config
    assert path.is_file(), f"the schedule runs a config that is not in the repository: {config}"
    monkeypatch.setenv("VSEARCH_STORAGE", STORAGE)
    cfg = load_config(path)
    assert cfg.storage == STORAGE, "the nightly config must take its storage from VSEARCH_STORAGE"
    return _env_names(yaml.safe_load(path.read_text()))


# -- Kubernetes ------------------------------------------------------------------------------------


def test_every_manifest_parses_into_the_expected_objects() -> None:
    found = sorted(
        (path.name, doc["apiVersion"], doc["kind"])
        for path in sorted(K8S.glob("*.yaml"))
        for doc in _documents(path)
    )
    assert found == sorted(
        [
            ("nightly-rayjob.yaml", "ray.io/v1", "RayJob"),
            ("nightly-cronjob.yaml", "v1", "ConfigMap"),
            ("nightly-cronjob.yaml", "v1", "ServiceAccount"),
            ("nightly-cronjob.yaml", "rbac.authorization.k8s.io/v1", "Role"),
            ("nightly-cronjob.yaml", "rbac.authorization.k8s.io/v1", "RoleBinding"),
            ("nightly-cronjob.yaml", "batch/v1", "CronJob"),
        ]
    )


def test_builtin_kinds_pass_the_official_schemas() -> None:
    validated = []
    for doc in _documents(CRONJOB_FILE):
        if doc["kind"] in BUILTIN_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            validated.append(doc["kind"])
    assert sorted(validated) == sorted(BUILTIN_KINDS)


def test_ray_pod_templates_pass_the_core_pod_template_schema() -> None:
    # The RayJob's CRD schema is not available, but its head and worker templates are core/v1
    # PodTemplateSpecs: validate each as the template of a PodTemplate.
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["workerGroupSpecs"]]
    for template in templates:
        wrapped = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "ray-pod"},
            "template": template,
        }
        kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


def test_rayjob_uses_known_fields_and_cleans_up_after_itself() -> None:
    job = _rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    # `kubectl create` of a generated name makes a new RayJob each night.
    assert job["metadata"]["generateName"] and "name" not in job["metadata"]
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, (
        f"unknown RayJob fields {set(spec) - RAYJOB_SPEC_FIELDS}"
    )
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    assert cluster["workerGroupSpecs"], "the nightly job needs CPU workers"
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
        assert 0 < group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    # A run ends before the next night's starts.
    assert 0 < spec["activeDeadlineSeconds"] < 24 * 3600


def test_rayjob_runs_nightly_on_a_repository_config_with_the_storage_it_provides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = _rayjob()
    entrypoint = job["spec"]["entrypoint"]
    # KubeRay pastes the entrypoint unquoted into the submitter pod's shell line: an operator
    # there would run the rest of the line in the submitter pod, not in the Ray job.
    assert not re.search(r"[;&|<>`$]", entrypoint), f"shell syntax in {entrypoint!r}"
    match = NIGHTLY.fullmatch(entrypoint)
    assert match, f"unexpected entrypoint {entrypoint!r}"
    # The job does not run in the image's repository folder: the config is named by its path
    # in the image's copy of the repository.
    image_prefix = f"{IMAGE_REPO}/"
    assert match.group(1).startswith(image_prefix), f"config outside {IMAGE_REPO}: {match.group(1)}"
    config = match.group(1).removeprefix(image_prefix)
    needed = _check_nightly_config(config, monkeypatch)
    assert "VSEARCH_STORAGE" in needed
    # The driver runs in the head pod, the workers read storage: both get what the config needs
    # and the S3 credentials.
    for container in _ray_containers(job):
        names = {env["name"] for env in container.get("env", [])}
        missing = (needed | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}) - names
        assert not missing, f"container {container['name']} lacks {sorted(missing)}"


def test_rayjob_environment_comes_from_a_secret_only() -> None:
    containers = _ray_containers(_rayjob())
    assert containers
    for container in containers:
        for env in container.get("env", []):
            assert "value" not in env, f"{container['name']}: literal value for {env['name']}"
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"]
            assert not ref.get("optional", False), f"{env['name']} must not be optional"


def test_no_credentials_are_written_in_the_deploy_files() -> None:
    files = sorted(p for p in (REPO / "deploy").rglob("*") if p.is_file())
    assert len(files) >= 5
    for path in files:
        text = path.read_text()
        assert not re.search(r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])", text), path
        assert not re.search(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{20,}", text)
        if path.suffix == ".yaml":
            assert "Secret" not in {doc["kind"] for doc in _documents(path)}, path


def test_configmap_carries_the_rayjob_and_the_cronjob_creates_it() -> None:
    objects = _by_kind(CRONJOB_FILE)
    configmap, cronjob = objects["ConfigMap"], objects["CronJob"]
    (key,) = configmap["data"]
    assert yaml.safe_load(configmap["data"][key]) == _rayjob(), (
        f"{CRONJOB_FILE.name}'s ConfigMap differs from {RAYJOB_FILE.name}"
    )

    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (container,) = pod["containers"]
    mounts = {
        m["name"]: m["mountPath"]
        for m in container["volumeMounts"]
        if volumes[m["name"]].get("configMap", {}).get("name") == configmap["metadata"]["name"]
    }
    assert len(mounts) == 1, "the CronJob's pod must mount the ConfigMap holding the RayJob"
    (mount_path,) = mounts.values()
    command = container.get("command", []) + container.get("args", [])
    assert command[:2] == ["kubectl", "create"], command
    assert command[command.index("-f") + 1] == f"{mount_path.rstrip('/')}/{key}"


def test_cronjob_service_account_may_only_create_get_and_list_rayjobs() -> None:
    objects = _by_kind(CRONJOB_FILE)
    namespace = _rayjob()["metadata"]["namespace"]
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == namespace, obj["kind"]
    account = objects["ServiceAccount"]["metadata"]["name"]
    pod = objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account

    role, binding = objects["Role"], objects["RoleBinding"]
    assert [
        (sorted(r["apiGroups"]), sorted(r["resources"]), sorted(r["verbs"])) for r in role["rules"]
    ] == [(["ray.io"], ["rayjobs"], ["create", "get", "list"])]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    ]


# -- VM: systemd and cron --------------------------------------------------------------------------


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def _submission(tokens: list[str], env: dict[str, str]) -> dict[str, Any]:
    """What a `ray job submit` command line submits; ``$NAME``/``${NAME}`` taken from ``env``."""
    start = next(i for i in range(len(tokens)) if tokens[i : i + 3] == ["ray", "job", "submit"])
    split = tokens.index("--", start)
    options, entrypoint = tokens[start + 3 : split], []
    for token in tokens[split + 1 :]:
        if re.match(r"\d*[<>]|&&$|\|\|?$|;$", token):  # the shell's redirections and operators
            break
        entrypoint.append(token)
    assert len(options) % 2 == 0, f"options without values: {options}"
    pairs = dict(zip(options[::2], options[1::2], strict=True))

    def expand(text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], text)

    runtime_env = json.loads(expand(pairs.pop("--runtime-env-json", "{}")))
    return {"options": pairs, "runtime_env": runtime_env, "entrypoint": " ".join(entrypoint)}


def _check_vm_submission(submission: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    assert submission["options"]["--address"] == "http://127.0.0.1:8265"
    assert submission["options"]["--working-dir"]
    match = NIGHTLY.fullmatch(submission["entrypoint"])
    assert match, f"unexpected entrypoint {submission['entrypoint']!r}"
    needed = _check_nightly_config(match.group(1), monkeypatch)
    # Variables of the submitting process do not reach the job: the runtime env must carry them.
    forwarded = submission["runtime_env"].get("env_vars", {})
    assert {name: forwarded.get(name) for name in needed} == {name: STORAGE for name in needed}


def test_systemd_service_submits_the_nightly_job(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _unit(SERVICE_FILE)["Service"]
    assert service["Type"] == "oneshot"
    env_file = service["EnvironmentFile"].lstrip("-")
    assert env_file.startswith("/") and not env_file.startswith(service["WorkingDirectory"])
    tokens = shlex.split(service["ExecStart"])
    assert tokens[0].startswith("/"), "systemd wants the program as an absolute path"
    submission = _submission(tokens, {"VSEARCH_STORAGE": STORAGE})
    assert submission["options"]["--working-dir"] == service["WorkingDirectory"]
    _check_vm_submission(submission, monkeypatch)


def test_systemd_timer_starts_the_service_every_night() -> None:
    timer = _unit(TIMER_FILE)
    assert timer["Timer"]["Unit"] == SERVICE_FILE.name
    assert timer["Timer"]["OnCalendar"].strip()
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_crontab_line_submits_the_same_job(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        line
        for line in CRON_FILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        and not re.match(r"^\w+=", line)
    ]  # fmt: skip
    (entry,) = lines
    fields = entry.split(maxsplit=5)
    assert len(fields) == 6, "a crontab line has five schedule fields and a command"
    for field in fields[:5]:
        assert re.fullmatch(r"[0-9*/,\-]+", field), f"bad schedule field {field!r}"
    command = fields[5]
    assert "%" not in command, "cron turns % into a newline"
    assert re.search(r"(?:^|&& )\. /etc/vsearch/env\b", command), "the env file must be sourced"
    submission = _submission(shlex.split(command), {"VSEARCH_STORAGE": STORAGE})
    _check_vm_submission(submission, monkeypatch)
    service_tokens = shlex.split(_unit(SERVICE_FILE)["Service"]["ExecStart"])
    assert submission == _submission(service_tokens, {"VSEARCH_STORAGE": STORAGE})
