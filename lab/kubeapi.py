"""A Kubernetes API server for lab tests: the project's fake
(tests/k8s/fake_apiserver.py, the one allowed stand-in), run inside a lab host
on its lab address as a transient systemd unit. ``kubectl`` (the machine
image's client, bound into the hosts when this machine has it: it is no Debian
package) reads it back for the k8s tests; starting the server needs only the
venv's Python and PyYAML."""
import json
from pathlib import Path

KUBECTL = Path("/usr/bin/kubectl")
KUBECTL_MISSING = (f"{KUBECTL} is missing: kubectl is no Debian package; the project's machine "
                   "image ships v1.32 there (any client from 1.28 on works)")


class KubectlMissing(RuntimeError):
    pass


SERVER_KUBECONFIG = "/root/fake-apiserver.kubeconfig"
# kube-apiserver's --audit-log-path: one audit.k8s.io/v1 Event per request (JSON lines), so a
# lab test sees what reached the server (query strings, status codes) from outside it.
AUDIT_LOG = "/var/log/kubernetes/audit.log"
KNOBS_PATH = "/fake-apiserver/knobs"  # tests/k8s/fake_apiserver.py KNOBS_PATH
# POST a JSON body to a path of the server with the admin kubeconfig; print the answer.
# Plain urllib, not the Kubernetes client: importing that took minutes under TCG (the
# e2e guest's API server step, 356 s, was mostly its import).
POST = """\
import base64, json, ssl, sys, urllib.request
import yaml
config = yaml.safe_load(open(sys.argv[1]))
cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
context = ssl.create_default_context(
    cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
request = urllib.request.Request(
    cluster["server"] + sys.argv[2], data=sys.argv[3].encode(), method="POST",
    headers={"Authorization": "Bearer " + user["token"], "Content-Type": "application/json"})
print(urllib.request.urlopen(request, context=context, timeout=60).read().decode())
"""

# Watch the EndpointSlices of a namespace: each second a list (the token of the admin
# kubeconfig), and a JSON line per endpoint whose conditions changed (the first list
# too). One process for the whole run: a client started per read costs seconds of CPU
# under TCG.
WATCH_SLICES = """\
import base64, json, ssl, sys, time, urllib.request
import yaml
config = yaml.safe_load(open(sys.argv[1]))
cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
context = ssl.create_default_context(
    cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
url = f"{cluster['server']}/apis/discovery.k8s.io/v1/namespaces/{sys.argv[2]}/endpointslices"
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + user["token"]})
seen = {}
while True:
    try:
        items = json.load(urllib.request.urlopen(request, context=context, timeout=10))["items"]
    except Exception:  # a refused, cut or truncated answer: the next second's
        items = None
    for item in items or ():
        for endpoint in item.get("endpoints") or ():
            address, conditions = endpoint["addresses"][0], endpoint.get("conditions", {})
            if seen.get(address) != conditions:
                seen[address] = conditions
                with open(sys.argv[3], "a") as out:
                    out.write(json.dumps({"at": time.time(), "address": address,
                                          **conditions}) + "\\n")
    time.sleep(1)
"""
SLICE_CHANGES = "/var/log/kubernetes/endpoint-changes.jsonl"


def watch_slices(lab, namespace="databases", host="salt-master"):
    """Start ``WATCH_SLICES`` in ``host`` (after ``start``) as the unit vgw-slice-watch."""
    server = lab[host]
    server.put("/root/watch_slices.py", WATCH_SLICES)
    server.run(["systemd-run", "--unit=vgw-slice-watch", str(lab.venv / "bin" / "python"),
                "/root/watch_slices.py", SERVER_KUBECONFIG, namespace, SLICE_CHANGES],
               check=True)


def slice_changes(lab, host="salt-master"):
    """[{at, address, ready, serving, terminating}]: what ``watch_slices`` saw change."""
    text = lab[host].run(["cat", SLICE_CHANGES]).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def start(lab, host="salt-master", segment="mgmt", namespaces=("databases",)):
    """Start the API server in ``host``; create ``namespaces``; return the admin
    kubeconfig (text) that clients in other hosts can use."""
    server = lab[host]
    server.run(["mkdir", "-p", "/var/log/kubernetes"], check=True)
    if server.run(["systemctl", "is-active", "--quiet", "vgw-fake-apiserver"]).ok:
        return server.read(SERVER_KUBECONFIG)  # started already (role.prepare run again)
    server.run(["systemd-run", "--unit=vgw-fake-apiserver", str(lab.venv / "bin" / "python"),
                str(lab.repo / "tests" / "k8s" / "fake_apiserver.py"), "--listen",
                server.spec.address(segment), "--kubeconfig", SERVER_KUBECONFIG,
                "--audit-log-path", AUDIT_LOG], check=True)
    server.run(["sh", "-c", f"for i in $(seq 300); do [ -s {SERVER_KUBECONFIG} ] && exit 0; "
                "sleep 0.1; done; exit 1"], check=True)
    for name in namespaces:
        post(lab, "/api/v1/namespaces",
             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, host)
    return server.read(SERVER_KUBECONFIG)


def kubectl(lab, *args, host="salt-master", input=None):
    """``kubectl ARGS`` in ``host`` against the lab's API server; its stdout.

    Raises KubectlMissing (KUBECTL_MISSING) where this machine has no kubectl."""
    if not KUBECTL.exists():
        raise KubectlMissing(KUBECTL_MISSING)
    result = lab[host].run(["kubectl", f"--kubeconfig={SERVER_KUBECONFIG}", *args], input=input)
    if not result.ok:
        raise AssertionError(f"kubectl {' '.join(args)}: {result}")
    return result.stdout


def knobs(lab, host="salt-master", **settings):
    """Turn the stand-in's knobs (refuse_dry_run=WEBHOOK|None, fail_next={count, code,
    retry_after, methods}, clear_faults=True) in the server started by ``start``; the
    knobs now set."""
    return post(lab, KNOBS_PATH, settings, host)


def post(lab, path, body, host="salt-master"):
    """POST ``body`` (JSON) to ``path`` of the server started by ``start``; its answer."""
    result = lab[host].run([str(lab.venv / "bin" / "python"), "-c", POST, SERVER_KUBECONFIG,
                            path, json.dumps(body)], check=True)
    return json.loads(result.stdout)


def audit(lab, since=0, host="salt-master"):
    """The audit events the server logged (``AUDIT_LOG``), from the ``since``-th on
    (``len(audit(lab))`` marks where a test starts)."""
    text = lab[host].run(["cat", AUDIT_LOG], check=True).stdout
    return [json.loads(line) for line in text.splitlines()[since:] if line.strip()]
