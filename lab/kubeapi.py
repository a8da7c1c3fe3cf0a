"""A Kubernetes API server for lab tests: the project's fake
(tests/k8s/fake_apiserver.py, the one allowed stand-in), run inside a lab host
on its lab address as a transient systemd unit, with ``kubectl`` beside it."""
import json

SERVER_KUBECONFIG = "/root/fake-apiserver.kubeconfig"


def start(lab, host="salt-master", segment="mgmt", namespaces=("databases",)):
    """Start the API server in ``host``; create ``namespaces``; return the admin
    kubeconfig (text) that clients in other hosts can use."""
    server = lab[host]
    server.run(["systemd-run", "--unit=vgw-fake-apiserver", str(lab.venv / "bin" / "python"),
                str(lab.repo / "tests" / "k8s" / "fake_apiserver.py"), "--listen",
                server.spec.address(segment), "--kubeconfig", SERVER_KUBECONFIG], check=True)
    server.run(["sh", "-c", f"for i in $(seq 300); do [ -s {SERVER_KUBECONFIG} ] && exit 0; "
                "sleep 0.1; done; exit 1"], check=True)
    for namespace in namespaces:
        kubectl(lab, "create", "-f", "-", host=host, input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
    return server.read(SERVER_KUBECONFIG)


def kubectl(lab, *args, host="salt-master", input=None):
    """``kubectl ARGS`` in ``host`` against the lab's API server; its stdout."""
    result = lab[host].run(["kubectl", f"--kubeconfig={SERVER_KUBECONFIG}", *args], input=input)
    if not result.ok:
        raise AssertionError(f"kubectl {' '.join(args)}: {result}")
    return result.stdout
