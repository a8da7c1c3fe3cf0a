"""A Kubernetes API server for lab tests: the project's fake
(tests/k8s/fake_apiserver.py, the one allowed stand-in), run inside a lab host
on its lab address as a transient systemd unit. ``kubectl`` (the machine
image's client, bound into the hosts when this machine has it: it is no Debian
package) reads it back for the k8s tests; starting the server needs only the
venv's Kubernetes client."""
from pathlib import Path

KUBECTL = Path("/usr/bin/kubectl")
KUBECTL_MISSING = (f"{KUBECTL} is missing: kubectl is no Debian package; the project's machine "
                   "image ships v1.32 there (any client from 1.28 on works)")
CREATE_NAMESPACE = """\
import sys
from kubernetes import client, config
api = client.CoreV1Api(config.new_client_from_config(sys.argv[1]))
for name in sys.argv[2:]:
    api.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
"""


class KubectlMissing(RuntimeError):
    pass


SERVER_KUBECONFIG = "/root/fake-apiserver.kubeconfig"


def start(lab, host="salt-master", segment="mgmt", namespaces=("databases",)):
    """Start the API server in ``host``; create ``namespaces``; return the admin
    kubeconfig (text) that clients in other hosts can use."""
    server = lab[host]
    if server.run(["systemctl", "is-active", "--quiet", "vgw-fake-apiserver"]).ok:
        return server.read(SERVER_KUBECONFIG)  # started already (role.prepare run again)
    server.run(["systemd-run", "--unit=vgw-fake-apiserver", str(lab.venv / "bin" / "python"),
                str(lab.repo / "tests" / "k8s" / "fake_apiserver.py"), "--listen",
                server.spec.address(segment), "--kubeconfig", SERVER_KUBECONFIG], check=True)
    server.run(["sh", "-c", f"for i in $(seq 300); do [ -s {SERVER_KUBECONFIG} ] && exit 0; "
                "sleep 0.1; done; exit 1"], check=True)
    server.run([str(lab.venv / "bin" / "python"), "-c", CREATE_NAMESPACE, SERVER_KUBECONFIG,
                *namespaces], check=True)
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
