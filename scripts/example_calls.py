"""Print ready-to-paste calls for the models a repository holds (used by `make run`).

Writes a few real held-out digits as PNG files under examples/ so the calls work as pasted.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service import bundle  # noqa: E402

# The printed commands are meant to be pasted whole, so their lines stay long.
# ruff: noqa: E501


def _write_examples(out_dir: Path) -> list[Path]:
    from sklearn.datasets import load_digits

    out_dir.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    paths = []
    for index in (0, 1, 7):
        pixels = np.round(digits.images[-1 - index] / 16.0 * 255).astype(np.uint8)
        path = out_dir / f"digit-{digits.target[-1 - index]}.png"
        Image.fromarray(pixels, mode="L").save(path)
        paths.append(path)
    return paths


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
    images = _write_examples(REPO_ROOT / "examples")
    first = images[0].relative_to(REPO_ROOT)
    b64 = base64.b64encode(images[0].read_bytes()).decode()
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
