"""deploy/kubernetes: every manifest, of the base and of the example overlay, is valid against
the Kubernetes schemas (kubernetes-validate, offline, strict), and the arguments and
environment the manifests give are accepted by the real binary: each worker index's
`reprise replay ... --dry-run` with JOB_COMPLETION_INDEX set, and `reprise coordinate ...
--dry-run`, with the volumes' paths mapped to the repository.

Kustomize itself is not on CI's machine, so `render` applies the subset of kustomize the
manifests use (resources, labels, namespace, images, strategic-merge patches that merge
lists of named items by name and replace other lists); where `kubectl` is installed, the
test also checks that `kubectl kustomize` renders the same.
"""

import copy
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"
BIN = os.environ.get("REPRISE_BIN", str(REPO / "target" / "debug" / "reprise"))


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def merge(base, patch):
    """A strategic merge: maps merged key by key; lists of maps with `name` merged by name;
    other lists replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        for p in patch:
            i = next((i for i, x in enumerate(out) if x["name"] == p["name"]), None)
            if i is None:
                out.append(copy.deepcopy(p))
            else:
                out[i] = merge(out[i], p)
        return out
    return copy.deepcopy(patch)


def walk_images(node, images):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image" and isinstance(v, str):
                name = v.split(":")[0]
                for img in images:
                    if img["name"] == name:
                        node[k] = f"{img.get('newName', name)}:{img.get('newTag', v.split(':')[-1])}"
            else:
                walk_images(v, images)
    elif isinstance(node, list):
        for x in node:
            walk_images(x, images)


def render(directory: Path) -> list[dict]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for r in k.get("resources", []):
        p = directory / r
        docs.extend(render(p) if p.is_dir() else load_all(p))
    for pair in k.get("labels", []):
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(pair["pairs"])
    for patch in k.get("patches", []):
        for p in load_all(directory / patch["path"]):
            for i, d in enumerate(docs):
                if d["kind"] == p["kind"] and d["metadata"]["name"] == p["metadata"]["name"]:
                    docs[i] = merge(d, p)
    if "namespace" in k:
        for d in docs:
            d["metadata"]["namespace"] = k["namespace"]
    walk_images(docs, k.get("images", []))
    return docs


KUSTOMIZATIONS = [DEPLOY / "base", DEPLOY / "overlays" / "example"]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_manifests_are_valid_against_the_kubernetes_schemas(directory):
    docs = render(directory)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Job", "Job", "PersistentVolumeClaim", "PersistentVolumeClaim", "Service"]
    for d in docs:
        kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
    workers = next(d for d in docs if d["metadata"]["name"] == "reprise-workers")["spec"]
    assert workers["completionMode"] == "Indexed"
    assert workers["completions"] == workers["parallelism"]
    anti = workers["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_the_results_pod_is_valid():
    (doc,) = load_all(DEPLOY / "results-pod.yaml")
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert doc["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "reprise-results"


def test_a_broken_manifest_is_caught():
    doc = render(DEPLOY / "base")[-1]
    broken = copy.deepcopy(doc)
    broken["spec"]["completionz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_the_renderer_agrees_with_kubectl_kustomize(directory):
    out = subprocess.run(["kubectl", "kustomize", str(directory)], check=True, capture_output=True, text=True)
    key = lambda d: (d["kind"], d["metadata"]["name"])
    assert sorted(load_all_text(out.stdout), key=key) == sorted(render(directory), key=key)


def load_all_text(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def mapped(arg: str, tmp: Path) -> str:
    """The manifests' volume paths, mapped to this machine."""
    return arg.replace("/traces/trace.parquet", str(REPO / "traces" / "azure-conv-2023.parquet")).replace(
        "/results", str(tmp / "results")
    )


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_the_binary_accepts_what_the_manifests_give(directory, tmp_path):
    docs = render(directory)
    workers = next(d for d in docs if d["metadata"]["name"] == "reprise-workers")
    n = workers["spec"]["completions"]
    c = workers["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["reprise"]
    total = 0
    for index in range(n):
        env = dict(os.environ, JOB_COMPLETION_INDEX=str(index))
        # Kubernetes expands $(JOB_COMPLETION_INDEX) in args from the pod's environment.
        args = [mapped(a.replace("$(JOB_COMPLETION_INDEX)", str(index)), tmp_path) for a in c["args"]]
        out = subprocess.run([BIN, *args, "--dry-run"], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"shard {index}/{n}: "), out.stdout
        total += int(out.stdout.split(": ")[1].split()[0])
        all_requests = int(out.stdout.split(" of ")[1].split()[0])
    # The shards' requests add up to the whole load.
    assert total == all_requests
    coordinator = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "reprise-coordinator")
    script = coordinator["spec"]["template"]["spec"]["containers"][0]["args"][0]
    coordinate = shlex.split(script.split(";")[0])
    assert coordinate[:2] == ["reprise", "coordinate"]
    out = subprocess.run([BIN, *[mapped(a, tmp_path) for a in coordinate[1:]], "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{n} workers" in out.stdout, out.stdout
    merge_cmd = shlex.split(script.split(";")[1])
    assert merge_cmd[:2] == ["reprise", "merge"]
    out = subprocess.run([BIN, "merge", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in [a for a in merge_cmd if a.startswith("-")]:
        assert flag in out.stdout, flag
