#!/usr/bin/env bash
# Install everything lungnode and its tests need, idempotently:
#   1. Debian packages: python3 + python3-venv (if missing), dcmtk, orthanc, dicom3tools,
#      chromium (the status page is tested in headless Chromium)
#      (apt-get only when a binary is missing; sudo only when not root);
#   2. the Debian "orthanc" service is stopped and disabled (tests start their own Orthanc
#      instances on random ports; the system one must not hold 4242/8042);
#   3. ./.venv with lungnode installed editable with its test extras
#      (pip install -e '.[test]'; torch is pinned in pyproject.toml);
#   4. the viewer test's tools: Debian chromium and orthanc-dicomweb (step 1), and under
#      ./.viewer/ (git-ignored, cached) the prebuilt OHIF viewer (npm pack @ohif/app@3.13.2,
#      unpacked to .viewer/package/dist) and puppeteer-core (npm; needs node and npm).
# Re-running is cheap: each step checks first and says what it skips.
#
# Environment: PYTHON (interpreter for the venv, default python3),
#              LUNGNODE_REINSTALL=1 (force the pip step).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.lungnode-install-stamp"

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()  # only needed if something must be installed; checked there
fi

as_root() {
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        die "need root for: $* (run as root or install sudo)"
    fi
    "${SUDO[@]}" "$@"
}

# --- 1. Debian packages ---------------------------------------------------------------
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if ! have "$PYTHON"; then
    missing+=(python3 python3-venv)
elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
for tool in storescu storescp echoscu; do
    have "$tool" || { missing+=(dcmtk); break; }
done
have Orthanc || missing+=(orthanc)
have dciodvfy || missing+=(dicom3tools)
have chromium || missing+=(chromium)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
have npm || missing+=(nodejs npm)

if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 \
        || die "missing ${missing[*]} and no apt-get: install them with your package manager"
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
else
    say "Debian packages present (dcmtk, orthanc, orthanc-dicomweb, dicom3tools, chromium, npm, $PYTHON with venv): skipping apt-get"
fi

# --- 2. the Debian orthanc service must not run -----------------------------------------
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    # systemd is the init system (a normal machine)
    if systemctl list-unit-files orthanc.service >/dev/null 2>&1 \
        && systemctl list-unit-files orthanc.service | grep -q '^orthanc\.service'; then
        if systemctl is-active --quiet orthanc.service || systemctl is-enabled --quiet orthanc.service; then
            say "stopping and disabling the system orthanc service (tests start their own)"
            as_root systemctl disable --now orthanc.service
        else
            say "system orthanc service is stopped and disabled"
        fi
    fi
elif [ -x /etc/init.d/orthanc ]; then
    # No systemd (a container): the package's SysV script may have started it. Its
    # "status"/"stop" match any /usr/sbin/Orthanc process (tests' own instances too), so
    # stop only the pid recorded in its pid file.
    pidfile=/run/orthanc.pid
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    is_orthanc() { [ -n "$1" ] && [ "$(readlink "/proc/$1/exe" 2>/dev/null || true)" = /usr/sbin/Orthanc ]; }
    if is_orthanc "$pid"; then
        say "stopping the system orthanc service (pid $pid from $pidfile; tests start their own)"
        as_root kill -TERM "$pid"
        for _ in $(seq 1 60); do
            is_orthanc "$pid" || break
            sleep 0.5
        done
        if is_orthanc "$pid"; then
            as_root kill -KILL "$pid" || true
        fi
        as_root rm -f "$pidfile"
    else
        say "system orthanc service is not running"
    fi
    if compgen -G '/etc/rc[2-5].d/S*orthanc' >/dev/null && command -v update-rc.d >/dev/null 2>&1; then
        say "disabling the system orthanc service at boot"
        as_root update-rc.d orthanc disable >/dev/null 2>&1 || true
    fi
fi

# --- 3. virtual environment and the package ---------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
else
    say "virtual environment $VENV exists ($("$VENV/bin/python" --version 2>&1))"
fi
"$VENV/bin/python" - <<'EOF' || die "lungnode needs Python >= 3.10 in .venv (set PYTHON=python3.11 and remove .venv)"
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
EOF

want_stamp="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "${LUNGNODE_REINSTALL:-0}" != "1" ] && [ -f "$STAMP" ] \
    && [ "$(cat "$STAMP")" = "$want_stamp" ] && [ -x "$VENV/bin/lungnode" ] \
    && "$VENV/bin/python" -c 'import node, segmentation, quant, torch, pytest' >/dev/null 2>&1; then
    say "lungnode already installed in .venv for this pyproject.toml: skipping pip (LUNGNODE_REINSTALL=1 forces it)"
else
    say "installing lungnode and its test dependencies into .venv (pip install -e '.[test]')"
    "$VENV/bin/python" -m pip install --no-input -e '.[test]'
    printf '%s\n' "$want_stamp" > "$STAMP"
fi

# --- 4. the viewer test's OHIF build and puppeteer-core ----------------------------------
OHIF_VERSION=3.13.2
PUPPETEER_VERSION=23.11.1   # the last line that runs on Debian 12's node 20 (24+ needs node 22)
VIEWER="$REPO_ROOT/.viewer"
mkdir -p "$VIEWER"
if [ -f "$VIEWER/package/dist/index.html" ] \
    && grep -q "\"version\": \"$OHIF_VERSION\"" "$VIEWER/package/package.json" 2>/dev/null; then
    say "OHIF $OHIF_VERSION already unpacked in .viewer/package/dist: skipping npm pack"
else
    say "fetching the prebuilt OHIF viewer (npm pack @ohif/app@$OHIF_VERSION)"
    rm -rf "$VIEWER/package"
    (cd "$VIEWER" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null \
        && tar xzf "ohif-app-$OHIF_VERSION.tgz" && rm -f "ohif-app-$OHIF_VERSION.tgz")
fi
if [ -f "$VIEWER/node_modules/puppeteer-core/package.json" ] \
    && grep -q "\"version\": \"$PUPPETEER_VERSION\"" "$VIEWER/node_modules/puppeteer-core/package.json"; then
    say "puppeteer-core $PUPPETEER_VERSION present in .viewer/node_modules: skipping npm install"
else
    say "installing puppeteer-core $PUPPETEER_VERSION into .viewer/ (no browser download: Debian's chromium is used)"
    [ -f "$VIEWER/package.json" ] || printf '{"name": "lungnode-viewer-test", "private": true}\n' > "$VIEWER/package.json"
    (cd "$VIEWER" && PUPPETEER_SKIP_DOWNLOAD=1 npm install --no-audit --no-fund --silent \
        "puppeteer-core@$PUPPETEER_VERSION")
fi

say "done: run the node with  .venv/bin/lungnode run   (tests: ./scripts/test.sh)"
