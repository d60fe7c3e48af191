#!/usr/bin/env bash
# Validates deploy/kubernetes/ (run by scripts/test.sh):
#   bash scripts/check-deploy.sh
# 1. every built-in resource against the Kubernetes API schemas, strictly
#    (an unknown or misspelt field fails), with kubernetes-validate from
#    PyPI, which carries the schemas (no network at check time);
# 2. what no schema checks: the kustomization lists every manifest, the
#    selectors of the Service, the PodDisruptionBudget and the ServiceMonitor
#    match the Deployment's pods, every probe and the ServiceMonitor name a
#    port that exists, and no manifest carries a secret value.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

KV_VERSION=1.37.0
VENV=${DEPLOY_CHECK_VENV:-$PWD/target/deploy-check/venv}
if [ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "$KV_VERSION" ]; then
    python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null \
        || apt_install python3 python3-venv
    log "installing kubernetes-validate $KV_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

dir=deploy/kubernetes
builtin=()
for f in "$dir"/*.yaml; do
    case $(basename "$f") in
        kustomization.yaml|servicemonitor.yaml) ;;  # no schema in the Kubernetes API
        *) builtin+=("$f") ;;
    esac
done
"$VENV/bin/kubernetes-validate" --strict --quiet "${builtin[@]}"
"$VENV/bin/python" - "$dir" <<'PY'
import pathlib, sys, yaml

root = pathlib.Path(sys.argv[1])
docs = {}
for path in sorted(root.glob("*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            docs.setdefault(doc["kind"], []).append((path.name, doc))
problems = []
def one(kind):
    found = docs.get(kind, [])
    if len(found) != 1:
        problems.append(f"expected one {kind}, found {len(found)}")
        return {}
    return found[0][1]

kustomization = one("Kustomization")
listed = set(kustomization.get("resources", []))
present = {p.name for p in root.glob("*.yaml")} - {"kustomization.yaml"}
if listed != present:
    problems.append(f"kustomization resources {sorted(listed)} != files {sorted(present)}")

deployment, service, pdb, monitor = (one(k) for k in
    ("Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"))
pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
def selects(selector, labels, what):
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"{what} selector {selector} does not select {labels}")
selects(deployment["spec"]["selector"]["matchLabels"], pod_labels, "Deployment")
selects(service["spec"]["selector"], pod_labels, "Service")
selects(pdb["spec"]["selector"]["matchLabels"], pod_labels, "PodDisruptionBudget")
selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"], "ServiceMonitor")

container = deployment["spec"]["template"]["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    port = container.get(probe, {}).get("httpGet", {}).get("port")
    if port not in ports:
        problems.append(f"{probe} names port {port!r}, not one of {sorted(ports)}")
service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
for name, target in service_ports.items():
    if target not in ports:
        problems.append(f"Service port {name} targets {target!r}, not a container port")
for endpoint in monitor["spec"]["endpoints"]:
    if endpoint["port"] not in service_ports:
        problems.append(f"ServiceMonitor scrapes port {endpoint['port']!r}, not a Service port")
if ports.get("metrics") != 9091 or ports.get("http") != 8080:
    problems.append(f"container ports {ports} differ from config/production.toml (8080, 9091)")

secret = one("Secret")
jwt = secret.get("stringData", {}).get("APP__AUTH__JWT_SECRET")
if jwt:
    problems.append("secret.yaml ships a signing key: leave APP__AUTH__JWT_SECRET empty")

if problems:
    print("\n".join(f"deploy check: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"deploy check: {sum(len(v) for v in docs.values())} manifests valid and consistent")
PY
