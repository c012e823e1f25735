#!/usr/bin/env bash
# Validates docs/sts-asyncapi.yaml (the Socket.IO contract) with the AsyncAPI project's own
# parser (@asyncapi/parser 3.6.3, its tree locked in scripts/asyncapi-validator), installed
# once under target/asyncapi-validator: the document against the AsyncAPI 3.0 schema, its
# references and its rules, then every message example against its payload schema (ajv, from
# the parser's own dependencies). Any error fails; warnings are printed.
# Idempotent: the parser is installed once; later runs only validate. Needs node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."

SPEC=docs/sts-asyncapi.yaml
LOCK=scripts/asyncapi-validator
DIR=target/asyncapi-validator
STAMP="$DIR/.lock-$(sha256sum "$LOCK/package-lock.json" | cut -c1-16)"

if [ ! -f "$STAMP" ]; then
  rm -rf "$DIR"
  mkdir -p "$DIR"
  if ! command -v npm >/dev/null; then
    echo "validate-asyncapi: npm is missing (scripts/install-deps.sh installs nodejs and npm)" >&2
    exit 1
  fi
  # The locked tree (jsep held at 1.4.0: later ones ask for node >= 20.16; Debian 12 has 18).
  cp "$LOCK/package.json" "$LOCK/package-lock.json" "$DIR/"
  npm ci --prefix "$DIR" --no-audit --no-fund --silent
  touch "$STAMP"
fi

NODE_PATH="$DIR/node_modules" node - "$SPEC" <<'JS'
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');

const path = process.argv[2];
(async () => {
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(path, 'utf8'), {
    source: path,
  });
  // Severity 0 is an error, 1 a warning.
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    const where = d.path && d.path.length ? d.path.join('.') : '(root)';
    const kind = d.severity === 0 ? 'error' : 'warning';
    if (d.severity <= 1) console.error(`${path}: ${kind}: ${where}: ${d.message} [${d.code}]`);
  }
  if (!document || errors.length) process.exit(1);
  // Every message example against its payload schema (the parser's rules do not).
  const Ajv = require('ajv');
  const ajv = new Ajv({ strict: false, allErrors: true });
  let bad = 0;
  for (const m of document.allMessages()) {
    const schema = m.payload() && m.payload().json();
    if (!schema) continue;
    const check = ajv.compile(schema);
    m.examples().all().forEach((ex, i) => {
      if (!ex.hasPayload()) return;
      if (!check(ex.payload())) {
        bad += 1;
        for (const e of check.errors) {
          console.error(`${path}: error: message ${m.id()} example ${ex.name() || i}: ${e.instancePath || '(root)'} ${e.message}`);
        }
      }
    });
  }
  if (bad) process.exit(1);
  const ops = document.operations().length;
  const msgs = document.allMessages().length;
  console.log(`${path}: valid AsyncAPI ${document.version()} (${ops} operations, ${msgs} messages)`);
})().catch((e) => {
  console.error(`${path}: ${e.stack || e}`);
  process.exit(1);
});
JS
