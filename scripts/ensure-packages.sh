#!/usr/bin/env bash
# Installs the Debian packages the test suite runs as real servers or tools, when missing:
# chromium (playwright browser tests), dovecot (IMAP/LMTP for mailbox-invites), clamav-daemon (clamd
# for portal uploads), docker-compose (validates docker-compose.yml; no engine runs here),
# poppler-utils (pdftotext, an independent PDF reader). The tests start these servers themselves
# with the project's own configs under deploy/ on high ports; the packages' own system instances
# are never used. Idempotent and quiet when everything is present.
set -euo pipefail
declare -A want=(
  [/usr/bin/chromium]=chromium
  [/usr/sbin/dovecot]="dovecot-imapd dovecot-lmtpd"
  [/usr/sbin/clamd]=clamav-daemon
  [/usr/bin/docker-compose]=docker-compose
  [/usr/bin/pdftotext]=poppler-utils
)
missing=()
for path in "${!want[@]}"; do
  [ -x "$path" ] || missing+=(${want[$path]})
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
  echo "ensure-packages: need root to install: ${missing[*]}" >&2
  exit 1
fi
SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
echo "ensure-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: packages must not start their system daemons (the tests run their own).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy"
  created_policy=1
fi
trap '[ $created_policy = 1 ] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get update -qq >/dev/null || true
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
