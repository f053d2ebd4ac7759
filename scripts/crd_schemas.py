"""Copy the OpenAPI schemas of a CustomResourceDefinition into k8s/schemas/.

Reads one CRD (a YAML file, or ``-`` for standard input) and writes, for each version it
serves, ``OUT/<group>/<kind>_<version>.json``: the version's ``openAPIV3Schema`` exactly as
the CRD declares it, less the ``description`` texts (they are most of a CRD's size and
validate nothing). Prints the SHA-256 of the input, for the provenance table in
k8s/schemas/README.md. The strict conversion kubeconform applies (no unknown fields) is done
when the schemas are used, in tests/deploy/manifests.py, so these files stay a plain copy.

    git --git-dir KSERVE.git show COMMIT:config/crd/full/serving.kserve.io_inferenceservices.yaml \\
        | .venv/bin/python scripts/crd_schemas.py - --out k8s/schemas
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

# Keywords whose value is one schema, or a list of schemas; `properties` maps names to them.
_ONE_SCHEMA = ("items", "additionalProperties", "not")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def strip_descriptions(schema: Any) -> Any:
    """``schema`` without its ``description`` keywords. Only keywords are dropped: a field
    that happens to be called ``description`` (a key of ``properties``) stays."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):
            continue
        if key == "properties":
            out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        elif key in _ONE_SCHEMA:
            out[key] = strip_descriptions(value)
        elif key in _SCHEMA_LISTS:
            out[key] = [strip_descriptions(sub) for sub in value]
        else:
            out[key] = value
    return out


def extract(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"<group>/<kind>_<version>.json": schema}`` for every served version of ``crd``."""
    if crd.get("kind") != "CustomResourceDefinition":
        raise SystemExit(f"not a CustomResourceDefinition: kind {crd.get('kind')!r}")
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    return {f"{group}/{kind.lower()}_{version['name']}.json":
            strip_descriptions(version["schema"]["openAPIV3Schema"])
            for version in crd["spec"]["versions"] if version.get("served", True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("crd", help="the CRD's YAML file, or - for standard input")
    parser.add_argument("--out", type=Path, default=Path("k8s/schemas"))
    args = parser.parse_args()
    raw = sys.stdin.buffer.read() if args.crd == "-" else Path(args.crd).read_bytes()
    print(f"sha256 {hashlib.sha256(raw).hexdigest()}")
    for name, schema in extract(yaml.safe_load(raw)).items():
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # One line: the files are copies to read with a JSON tool, not to edit.
        path.write_text(json.dumps(schema, separators=(",", ":")) + "\n", encoding="utf-8")
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
