#!/bin/sh
# Install alert_worker for systemd (docs/operations.md "systemd"). Run as root from a checkout:
#   useradd --system --home /opt/alert-worker --shell /usr/sbin/nologin alert   # once
#   sh deploy/install.sh
#   $EDITOR /etc/alert-worker/alert-worker.env
#   systemctl daemon-reload && systemctl enable --now alert-worker         # or alert-worker@1 alert-worker@2
#
# The venv under PREFIX holds a copy of the package (`pip install --no-deps .`, not an editable link to
# this checkout), so the unit's ProtectHome=true cannot hide it: the checkout may live anywhere and may be
# deleted afterwards. An existing env file is never overwritten. PREFIX, ETC and UNITS move the three
# places (the units are rewritten to match); OWNER_GROUP= (empty) skips the root:alert ownership.
set -eu
PREFIX=${PREFIX:-/opt/alert-worker}
ETC=${ETC:-/etc/alert-worker}
UNITS=${UNITS:-/etc/systemd/system}
OWNER_GROUP=${OWNER_GROUP-alert}
PYTHON=${PYTHON:-python3}
src=$(cd "$(dirname "$0")/.." && pwd)

"$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q -r "$src/requirements.lock"
"$PREFIX/venv/bin/pip" install -q --no-deps "$src"

if [ ! -e "$ETC/alert-worker.env" ]; then
    if [ -n "$OWNER_GROUP" ]; then
        install -D -m 0640 -o root -g "$OWNER_GROUP" "$src/deploy/alert-worker.env.example" "$ETC/alert-worker.env"
    else
        install -D -m 0640 "$src/deploy/alert-worker.env.example" "$ETC/alert-worker.env"
    fi
fi

mkdir -p "$UNITS"
for unit in alert-worker.service alert-worker@.service alert-worker-sweep.service alert-worker-sweep.timer; do
    sed -e "s#/opt/alert-worker#$PREFIX#g" -e "s#/etc/alert-worker#$ETC#g" "$src/deploy/$unit" >"$UNITS/$unit"
    chmod 0644 "$UNITS/$unit"
done
echo "installed: $PREFIX/venv/bin/alert-worker ($("$PREFIX/venv/bin/alert-worker" --version)), $ETC/alert-worker.env, units in $UNITS"
