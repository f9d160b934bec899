#!/usr/bin/env bash
# checkov on template.yaml in its own virtual environment (it pins packages the project must not share).
# Every skip in template.yaml carries its justification in the resource's Metadata.checkov block.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CHECKOV_VENV:-.venv-checkov}"
[ -x "$venv/bin/checkov" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q checkov; }
exec "$venv/bin/checkov" -f template.yaml --framework cloudformation --compact --quiet --skip-download
