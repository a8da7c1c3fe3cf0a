"""How long the k8s module takes for many endpoints, against the loopback API server.

Run by hand: ``.venv/bin/python benchmarks/k8s_endpointslices.py [COUNT ...]``.
Prints one row per endpoint count: slices, the dry run of a first apply, the
apply, a second (no-op) apply and set_endpoints_ready, in seconds. The fake
server is plain Python, so the numbers bound the module's own cost (request
building, diffs) plus the server's; a real API server answers faster.
"""

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "k8s")]

from fake_apiserver import FakeApiServer  # noqa: E402
from repo_modules import load  # noqa: E402

k8s = load("salt/_modules/k8s.py")
k8s.__salt__ = {"config.get": lambda key, default=None: default}


def addresses(count):
    return [f"198.18.{4 + i // 250}.{1 + i % 250}" for i in range(count)]


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main(counts):
    with FakeApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        conn = {"kubeconfig": api.kubeconfig(f"{tmp}/kubeconfig")}
        print(
            f"{'endpoints':>9} {'slices':>6} {'dry run':>8} {'apply':>8} {'no-op':>8} {'ready':>8}"
        )
        for index, count in enumerate(counts):
            namespace = f"bench{index}"
            api.objects[("namespaces", None, namespace)] = {"metadata": {"name": namespace}}
            k8s.apply_service(
                "pg", namespace, [{"name": "postgres", "port": 5432, "target_port": 6432}], **conn
            )
            endpoints = addresses(count)
            dry, _ = timed(
                k8s.apply_endpointslices, "pg", namespace, endpoints, dry_run=True, **conn
            )
            real, done = timed(k8s.apply_endpointslices, "pg", namespace, endpoints, **conn)
            noop, again = timed(
                k8s.apply_endpointslices, "pg", namespace, endpoints, dry_run=True, **conn
            )
            assert again["changes"] == {}, "a second apply must change nothing"
            ready, _ = timed(k8s.set_endpoints_ready, "pg", namespace, False, **conn)
            print(
                f"{count:>9} {len(done['slices']):>6} {dry:>8.2f} {real:>8.2f} {noop:>8.2f} "
                f"{ready:>8.2f}"
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 100, 1000, 5000])
