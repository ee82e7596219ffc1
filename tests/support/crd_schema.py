"""Check objects against the InferencePool CRD the way the API server does, minus the server.

- defaults: the schema's ``default`` values are applied first (the server defaults
  before it validates, and several CEL rules read defaulted fields);
- structure: JSON Schema draft 4 semantics (Kubernetes' structural schemas use them,
  e.g. boolean ``exclusiveMinimum``), with the ``jsonschema`` package;
- CEL: every ``x-kubernetes-validations`` rule is compiled and evaluated with the
  ``cel-python`` package, ``self`` bound to the value at that node.

Not checked here (the API server does these): ``x-kubernetes-list-type: map`` key
uniqueness (covered by a CEL rule too), CEL cost budgets, ``messageExpression`` (unused)
and transition rules with ``oldSelf`` (unused).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "accelgen.dev_inferencepools.yaml"
EXAMPLES = ROOT / "examples"


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def pool_schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    crd = crd or load_crd()
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill in ``default`` values of absent properties, recursively (structural defaulting)."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def structural_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]


_ENV = celpy.Environment()


def cel_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Evaluate every CEL rule in ``schema`` against ``value`` (and below it)."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = _ENV.program(_ENV.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if result is not celpy.celtypes.BoolType(True) and result != celpy.celtypes.BoolType(True):
            errors.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                errors += cel_errors(sub, value[key], f"{path}.{key}" if path else key)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def validate_pool(obj: dict[str, Any]) -> list[str]:
    """Every error the schema and its CEL rules find in ``obj`` (empty: valid)."""
    schema = pool_schema()
    defaulted = apply_defaults(schema, copy.deepcopy(obj))
    errors = structural_errors(schema, defaulted)
    return errors or cel_errors(schema, defaulted)


def example_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
