# Sourced by the scripts: find CIFAR-10 (DARTS_SG_DATA, else ../shared/data when present, else ./data).
if [ -z "${DARTS_SG_DATA:-}" ]; then
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ -d "$here/../shared/data/cifar-10-batches-py" ]; then
    export DARTS_SG_DATA="$(cd "$here/../shared/data" && pwd)"
  fi
fi
