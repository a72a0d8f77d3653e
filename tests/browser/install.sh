#!/usr/bin/env bash
# tests/browser/install.sh: what the browser and Node client tests need, installed once and reused.
#
#   - Debian's chromium (/usr/bin/chromium), with apt-get when it is missing (needs root).
#     Playwright never downloads a browser here. fonts-nanum comes along so that Korean text
#     renders in screenshots; no test depends on it.
#   - Debian's openssl binary, with apt-get when it is missing: http2.test.mjs makes its
#     self-signed certificate with it.
#   - Debian's haproxy and nginx, with apt-get when they are missing: clients.test.mjs runs
#     each as a plain foreground process with its own configuration. A policy-rc.d that
#     refuses keeps the packages from starting their services (nginx would take :80).
#   - playwright-core and ws, exactly as package-lock.json pins them, by `npm ci` into
#     ${XDG_CACHE_HOME:-~/.cache}/wsechod/browser. The sha256 of the lock file is stamped
#     there after a good install; a warm run compares it and does nothing else.
#
# tests/browser/run.mjs loads the modules from that directory. Prints what it did.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/wsechod/browser

if [[ -x /usr/bin/chromium ]]; then
  echo "browser-install: chromium present: $(/usr/bin/chromium --version 2>/dev/null)"
else
  echo "browser-install: installing Debian's chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q update >/dev/null
  apt-get -q -y install --no-install-recommends chromium fonts-nanum >/dev/null
  echo "browser-install: installed $(/usr/bin/chromium --version 2>/dev/null)"
fi

if command -v openssl >/dev/null; then
  echo "browser-install: openssl present: $(openssl version)"
else
  echo "browser-install: installing Debian's openssl with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q update >/dev/null
  apt-get -q -y install --no-install-recommends openssl >/dev/null
  echo "browser-install: installed $(openssl version)"
fi

missing=()
for bin in haproxy nginx; do [[ -x /usr/sbin/$bin ]] || missing+=("$bin"); done
if ((${#missing[@]})); then
  echo "browser-install: installing Debian's ${missing[*]} with apt-get, services not started"
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d created=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
  fi
  apt-get -q update >/dev/null
  rc=0
  apt-get -q -y install --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  [[ -z $created ]] || rm -f "$policy"
  ((rc == 0)) || exit "$rc"
fi
echo "browser-install: $(/usr/sbin/haproxy -v | head -1)"
echo "browser-install: $(/usr/sbin/nginx -v 2>&1)"

want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [[ -f $cache/lock.sha256 && $(<"$cache/lock.sha256") == "$want" &&
  -f $cache/node_modules/playwright-core/package.json && -f $cache/node_modules/ws/package.json ]]; then
  echo "browser-install: node modules up to date in $cache"
  exit 0
fi
echo "browser-install: npm ci into $cache"
mkdir -p "$cache"
rm -f "$cache/lock.sha256"
cp "$here/package.json" "$here/package-lock.json" "$cache/"
npm ci --prefix "$cache" --ignore-scripts --no-audit --no-fund --loglevel=error
echo "$want" >"$cache/lock.sha256"
for m in playwright-core ws; do
  echo "browser-install: $m $(node -p "require('$cache/node_modules/$m/package.json').version") installed"
done
