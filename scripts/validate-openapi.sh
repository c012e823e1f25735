#!/usr/bin/env bash
# Validates docs/sts-openapi.yaml against the OpenAPI specification with
# openapi-spec-validator, installed (pinned) in a virtualenv under target/openapi-venv.
# Idempotent: the venv is made and filled once; later runs only validate, quietly.
# Needs python3 with the venv module (Debian: python3-venv). PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

VALIDATOR_VERSION=0.9.0
SPEC=docs/sts-openapi.yaml
VENV=target/openapi-venv
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.openapi-spec-validator-$VALIDATOR_VERSION"

if [ ! -f "$STAMP" ]; then
  rm -rf "$VENV"
  mkdir -p target
  if ! "$PYTHON" -m venv "$VENV"; then
    echo "validate-openapi: cannot create a venv (on Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "openapi-spec-validator==$VALIDATOR_VERSION"
  touch "$STAMP"
fi

"$VENV/bin/python" - "$SPEC" docs/sts-api.md <<'PY'
"""Validates the spec, then every example against its schema: the examples inside the spec and
the ```json blocks of the prose doc (which tests/docs.rs also parses into the Rust types)."""
import json
import re
import sys

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

spec_path, doc_path = sys.argv[1], sys.argv[2]
errors = []

spec, _ = read_from_filename(spec_path)
try:
    validate(spec)
except Exception as e:  # noqa: BLE001 - report any validation failure plainly
    print(f"{spec_path}: invalid OpenAPI: {e}", file=sys.stderr)
    sys.exit(1)


def deref(node):
    """Follows a whole-object $ref (responses, request bodies)."""
    while isinstance(node, dict) and set(node) == {"$ref"}:
        target = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check(instance, schema, where):
    root = dict(schema, components=spec["components"])
    for err in OAS31Validator(root).iter_errors(instance):
        path = "/".join(str(p) for p in err.absolute_path)
        errors.append(f"{where}: {path or '(root)'}: {err.message}")


def media_examples(media, where):
    schema = media.get("schema")
    if schema is None:
        return
    if "example" in media:
        check(media["example"], schema, where)
    for name, ex in media.get("examples", {}).items():
        check(deref(ex)["value"], schema, f"{where} example {name!r}")


for path, item in spec["paths"].items():
    for method, op in item.items():
        if not isinstance(op, dict) or "responses" not in op:
            continue
        body = deref(op.get("requestBody", {}))
        for ctype, media in body.get("content", {}).items():
            media_examples(media, f"{method.upper()} {path} request")
        for status, resp in op["responses"].items():
            for ctype, media in deref(resp).get("content", {}).items():
                media_examples(media, f"{method.upper()} {path} {status}")

schemas = spec["components"]["schemas"]
fault_fields = set(schemas["Faults"]["properties"])
with open(doc_path, encoding="utf-8") as f:
    doc = f.read()
for n, block in enumerate(re.findall(r"^```json\n(.*?)^```", doc, re.S | re.M), 1):
    where = f"{doc_path} json block {n}"
    try:
        value = json.loads(block)
    except json.JSONDecodeError as e:
        errors.append(f"{where}: {e}")
        continue
    first = next(iter(value), None) if isinstance(value, dict) else None
    if first == "fragment_id":
        name = "ProcessRequest" if "audio" in value else "ProcessResponse"
    elif first == "mode":
        name = "Stats"
    elif first in fault_fields:
        name = "Faults"
    else:
        continue
    check(value, {"$ref": f"#/components/schemas/{name}"}, f"{where} ({name})")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
PY
