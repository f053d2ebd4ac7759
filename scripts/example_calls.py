"""Print ready-to-paste calls for the models a repository holds (used by `make run`).

The calls send the digits committed under examples/ (written by scripts/example_images.py);
docs/calling-native.md and docs/calling-tfserving.md have the same calls and more.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service import bundle  # noqa: E402

# The printed commands are meant to be pasted whole, so their lines stay long.
# ruff: noqa: E501


def _examples() -> list[Path]:
    images = sorted((REPO_ROOT / "examples").glob("digit-*.png"))
    if not images:
        raise SystemExit("examples/digit-*.png are missing: "
                         "`.venv/bin/python scripts/example_images.py` writes them")
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repo", type=Path, default=Path("models"))
    parser.add_argument("--http-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=8500)
    args = parser.parse_args()
    models = sorted(p.name for p in args.model_repo.glob("*")
                    if p.is_dir() and bundle.list_versions(p))
    if not models:
        print(f"no complete bundle under {args.model_repo}", file=sys.stderr)
        return 1
    model = "digits" if "digits" in models else models[0]
    images = _examples()
    first = (REPO_ROOT / "examples" / "digit-8.png").relative_to(REPO_ROOT)
    b64 = base64.b64encode((REPO_ROOT / first).read_bytes()).decode()
    http = f"http://localhost:{args.http_port}"
    print(f"""
Serving {', '.join(models)} from {args.model_repo}: HTTP {http}, gRPC localhost:{args.grpc_port}.
Once it logs "ready", try (in another terminal):

  curl -s {http}/v1/models/{model}:cluster -H 'Content-Type: image/png' --data-binary @{first}
  curl -s {http}/v1/models/{model}:cluster -F file=@{first} -F return_reconstruction=none
  curl -s {http}/v1/models/{model}:cluster -d '{{"instances": [{{"b64": "{b64}"}}], "top_k": 3}}'
  curl -s {http}/v1/models/{model}:predict -d '{{"signature_name": "predict_bytes", "instances": [{{"b64": "{b64}"}}]}}'
  curl -s {http}/v1/models/{model}            # TF Serving model status
  curl -s {http}/v1/models/{model}/metadata   # signatures and manifest
  curl -s {http}/metrics | grep aecluster_
  .venv/bin/python -m service.client cluster {' '.join(str(p.relative_to(REPO_ROOT)) for p in images)} --url {http} --model {model}
  grpcurl -plaintext -d '{{"model": "{model}", "images": [{{"encoded": "{b64}"}}]}}' localhost:{args.grpc_port} aecluster.v1.ClusterService/Cluster

OpenAPI docs: {http}/docs    Stop with Ctrl-C (drains in-flight requests first).
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
