"""Convert a CustomResourceDefinition's openAPIV3Schema into a strict JSON schema.

    python tests/k8s_schemas/crd_schema.py tests/k8s_schemas/ray.io_rayjobs.yaml v1 > rayjob.json

Used by tests/test_manifests.py. Two adjustments make a JSON-schema validator agree with the
API server, and one makes it stricter (README.md here explains why):
- properties that carry a `default` are dropped from `required` (defaults apply first);
- `additionalProperties: false` on every object with `properties` and no
  `x-kubernetes-preserve-unknown-fields` (the API server prunes or rejects unknown fields;
  we reject them, so a typo fails the test instead of silently vanishing);
CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def strictify(node) -> None:
    """In place, recursively (see the module docstring)."""
    if isinstance(node, list):
        for item in node:
            strictify(item)
        return
    if not isinstance(node, dict):
        return
    props = node.get("properties")
    if isinstance(props, dict):
        if "required" in node:
            node["required"] = [
                r for r in node["required"] if not (isinstance(props.get(r), dict) and "default" in props[r])
            ]
            if not node["required"]:
                del node["required"]
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
    for value in node.values():
        strictify(value)


def crd_json_schema(crd_path: Path, version: str) -> dict:
    """The strict JSON schema of one served version of the CRD in `crd_path`."""
    crd = yaml.load(Path(crd_path).read_text(), Loader=_Loader)
    names = crd["spec"]["names"]
    [ver] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = copy.deepcopy(ver["schema"]["openAPIV3Schema"])
    strictify(schema)
    # CRDs type the root's apiVersion/kind loosely; pin them to this resource.
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version}"}
    schema["properties"]["kind"] = {"const": names["kind"]}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "spec"})
    return schema


if __name__ == "__main__":
    json.dump(crd_json_schema(Path(sys.argv[1]), sys.argv[2]), sys.stdout, indent=1)
