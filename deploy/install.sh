#!/usr/bin/env bash
# Set up pacs-annotator on this machine (Debian 12, Python >= 3.11): the system packages it
# needs, a virtual environment at .venv in the repository root, and the project in it.
#   deploy/install.sh          to run the service (adds redis-server for the embedded broker)
#   deploy/install.sh --dev    also what the tests need: Orthanc, dcmtk, dicom3tools, chromium, openssl,
#                              systemd (systemd-analyze) and docker-compose for the deploy/ checks,
#                              npm (the browser tests drive Debian's chromium), and the prebuilt
#                              OHIF Viewer from npm in .cache/ohif/VERSION/ (the viewer test)
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
case "${1:-}" in
  --dev) dev=1 ;;
  "") ;;
  *) echo "usage: $0 [--dev]" >&2; exit 2 ;;
esac

packages=(redis-server)
if [ "$dev" = 1 ]; then
  packages+=(orthanc orthanc-dicomweb dcmtk dicom3tools chromium openssl)
  # independent readers of our SEG/SR: PixelMed's validators (libpixelmed-java names no JRE;
  # the JDK's source launcher runs tests/support/PixelmedBatch.java, one JVM for many files)
  packages+=(libpixelmed-java default-jdk-headless)
  # the deploy/ checks: systemd-analyze verify for the unit files, docker-compose config
  packages+=(systemd docker-compose)
  # npm fetches the OHIF Viewer. A machine whose Node.js comes from elsewhere (NodeSource's
  # nodejs ships npm and conflicts with Debian's npm package) already has the command.
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  # Debian's orthanc package would start a system Orthanc where systemd runs; the tests
  # start their own on free ports and never use it.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
  done
fi
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "pacs-annotator needs Python >= 3.11 (found $("$python" --version))" >&2; exit 1; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned exactly: this is the CPU build; a loose requirement would let pip
# fetch a multi-GB CUDA build. GPU sites install their CUDA build of the same version first.
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ "$dev" = 1 ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
if [ "$dev" = 1 ]; then
  # The OHIF Viewer for tests/integration/test_ohif_viewer.py: the npm package @ohif/app
  # ships a prebuilt dist/ (index.html, app-config.js, bundles); no build step, no node_modules.
  # Pinned; keep in step with OHIF_VERSION in tests/support/ohif.py. Fetched only if absent.
  ohif_version=3.13.2
  ohif_dir=.cache/ohif/$ohif_version
  if [ ! -f "$ohif_dir/dist/index.html" ]; then
    echo "fetching @ohif/app@$ohif_version from npm into $ohif_dir"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "@ohif/app@$ohif_version" >/dev/null)
    rm -rf "$ohif_dir.partial"
    mkdir -p "$ohif_dir.partial"
    tar -xzf "$tmp"/ohif-app-"$ohif_version".tgz -C "$ohif_dir.partial" --strip-components=1
    rm -rf "$tmp" "$ohif_dir"
    mv "$ohif_dir.partial" "$ohif_dir"
  fi
fi
echo "pacs-annotator installed in .venv ($(.venv/bin/pacs-annotator --version))"
