"""The committed generated code is what scripts/gen_protos.py makes from protos/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service._generated.aecluster.v1 import cluster_service_pb2 as pb
from service._generated.aecluster.v1 import cluster_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "service" / "_generated"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_current(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
                   check=True, capture_output=True, cwd=tmp_path)
    fresh, committed = _tree(out), _tree(COMMITTED)
    assert sorted(fresh) == sorted(committed), (
        "service/_generated/ lists other files than the protos produce: "
        "run `python scripts/gen_protos.py` and commit the result")
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files {stale}: run `python scripts/gen_protos.py`"


def test_generated_imports_are_package_relative() -> None:
    # protoc writes `from aecluster.v1 import ...`, which only works with service/_generated
    # on sys.path; the script rewrites those imports (and this import of the grpc module
    # above succeeding proves the rewrite works).
    text = (COMMITTED / "aecluster" / "v1" / "cluster_service_pb2_grpc.py").read_text()
    assert "from service._generated.aecluster.v1 import cluster_service_pb2" in text
    assert "\nfrom aecluster" not in text
    assert pb_grpc.ClusterServiceStub is not None


def test_messages_round_trip() -> None:
    request = pb.ClusterRequest(
        model="digits", version=3, return_reconstruction=pb.ClusterRequest.PNG,
        return_embedding=True, top_k=2,
        images=[pb.Image(encoded=b"\x89PNG"),
                pb.Image(tensor=pb.Tensor(shape=[2, 2], dtype="uint8", data=bytes(4)))])
    parsed = pb.ClusterRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert parsed.HasField("version")
    assert [image.WhichOneof("kind") for image in parsed.images] == ["encoded", "tensor"]
    assert not pb.ClusterRequest(model="digits").HasField("version")
    service = pb.DESCRIPTOR.services_by_name["ClusterService"]
    assert service.full_name == "aecluster.v1.ClusterService"
    stream = service.methods_by_name["ClusterStream"]
    assert stream.client_streaming and stream.server_streaming
    assert pb.ClusterRequest.Reconstruction.keys() == ["NONE", "PNG", "ARRAY"]
