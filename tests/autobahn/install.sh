#!/usr/bin/env bash
# Install Autobahn|Testsuite (`wstest`, Python 2.7 only) into a private cache.
#
#   tests/autobahn/install.sh        # prints the install prefix on stdout
#
# The launcher is PREFIX/bin/wstest; PREFIX/bin/python2 runs the same
# interpreter (used to resolve the case selection). Progress goes to stderr.
#
# Debian 12 has no Python 2, so (see shared/notes/autobahn.md):
#   * Python 2.7 and the two libraries Debian 12 lacks (libssl1.1, libffi7) are
#     downloaded from Debian 11 with a private apt configuration and unpacked
#     with `dpkg-deb -x`; nothing is installed system-wide from Debian 11;
#   * pip 20.3.4 is bootstrapped from its wheel, then autobahntestsuite is
#     installed under a constraints file pinning the whole known-good set.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/wsechod/autobahn/<tag>. The tag hashes
# the pins below and RECIPE_REV, so changing either rebuilds the environment
# (bump RECIPE_REV when you change the recipe without changing a pin). A
# finished install is marked by PREFIX/.complete; a warm run only checks it.
#
# Host needs (installed with apt-get when missing and running as root): the
# Debian 12 shared libraries Python 2.7 links to, gcc and libc6-dev (to build
# wsaccel), python3 with pip (to fetch the pip wheel).
set -euo pipefail

# ---------------------------------------------------------------- pins ----
readonly RECIPE_REV=1
readonly DEB_SUITE=bullseye
readonly DEB_PKGS=(
  python2.7-minimal=2.7.18-8+deb11u1
  libpython2.7-minimal=2.7.18-8+deb11u1
  libpython2.7-stdlib=2.7.18-8+deb11u1
  libpython2.7-dev=2.7.18-8+deb11u1
  libssl1.1=1.1.1w-0+deb11u1
  libffi7=3.3-6
)
readonly HOST_PKGS=(
  libbz2-1.0 libdb5.3 libexpat1 libncursesw6 libnsl2 libreadline8
  libsqlite3-0 libtinfo6 libtirpc3 zlib1g gcc libc6-dev ca-certificates
)
readonly PIP_VERSION=20.3.4
readonly BOOTSTRAP_PINS=(pip==20.3.4 setuptools==44.1.1 wheel==0.37.1)
readonly SUITE_REQ=autobahntestsuite==25.10.1
# The known-good resolution of autobahntestsuite 25.10.1 on Python 2.7.
readonly PY_PINS=(
  autobahntestsuite==25.10.1 autobahn==0.10.9 Twisted==19.10.0 txaio==2.1.0
  zope.interface==4.6.0 incremental==16.10.1 Automat==22.10.0 attrs==21.4.0
  constantly==15.1.0 hyperlink==21.0.0 idna==2.10 typing==3.10.0.0
  PyHamcrest==1.10.1
  pyOpenSSL==19.1.0 cryptography==3.3.2 cffi==1.15.1 pycparser==2.21
  enum34==1.1.10 ipaddress==1.0.23 six==1.16.0 service-identity==18.1.0
  pyasn1==0.5.1 pyasn1-modules==0.3.0
  klein==17.10.0 Werkzeug==1.0.1 Jinja2==2.11.3 MarkupSafe==1.1.1
  unittest2==1.1.0 traceback2==1.4.0 linecache2==1.0.0
  wsaccel==0.6.6 ujson==2.0.3
  setuptools==44.0.0 wheel==0.37.1 pip==20.3.4
)

log() { printf 'autobahn-install: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

tag_hash=$(printf '%s\n' "$RECIPE_REV" "$DEB_SUITE" "${DEB_PKGS[@]}" \
  "${BOOTSTRAP_PINS[@]}" "$SUITE_REQ" "${PY_PINS[@]}" | sha256sum | cut -c1-12)
readonly TAG="ats25.10.1-$tag_hash"
readonly ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/wsechod/autobahn"
readonly PREFIX="$ROOT/$TAG"

# Fast path (warm cache): no lock, no subprocesses.
if [[ -f $PREFIX/.complete ]]; then
  printf '%s\n' "$PREFIX"
  exit 0
fi

mkdir -p "$ROOT"
# Serialise concurrent installs into the same cache.
exec 9>"$ROOT/.lock"
flock 9
if [[ -f $PREFIX/.complete ]]; then
  printf '%s\n' "$PREFIX"
  exit 0
fi

start=$SECONDS
log "installing into $PREFIX (cold cache)"

# ------------------------------------------------------- host packages ----
ensure_host_packages() {
  local missing=() p
  for p in "${HOST_PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
      || missing+=("$p")
  done
  if ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=(python3 python3-pip)
  fi
  ((${#missing[@]} == 0)) && return 0
  log "missing host packages: ${missing[*]}"
  [[ $(id -u) -eq 0 ]] || die "run as root, or install them: apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}
ensure_host_packages

# --------------------------------------------------- private apt config ----
# Print one deb822 stanza for Debian 11 built from the host's first
# non-security Debian source (so no mirror host is written down here).
bullseye_stanza() {
  local arch
  arch=$(dpkg --print-architecture)
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    # Stanzas are separated by blank lines; keep the first that is not the
    # security archive, drop comments and the fields we override.
    awk -v suite="$DEB_SUITE" -v arch="$arch" '
      BEGIN { RS = ""; FS = "\n" }
      $0 ~ /security/ { next }
      {
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^[[:space:]]*#/ || $i ~ /^(Suites|Targets|Architectures|Components):/) continue
          print $i
        }
        print "Suites: " suite
        print "Components: main"
        print "Architectures: " arch
        print "Targets: Packages"
        exit
      }' /etc/apt/sources.list.d/debian.sources
  elif [[ -f /etc/apt/sources.list ]]; then
    # One-line format: "deb [options] URI suite components...".
    local uri
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {
                for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list)
    [[ -n $uri ]] || return 0
    printf '%s\n' "Types: deb" "URIs: $uri" "Suites: $DEB_SUITE" "Components: main" \
      "Architectures: $arch" "Targets: Packages" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  fi
}

setup_private_apt() {
  mkdir -p "$APT_DIR"/{sources.list.d,preferences.d,lists/partial,cache/archives/partial}
  local stanza
  stanza=$(bullseye_stanza)
  [[ -n $stanza ]] || die "no Debian source found in /etc/apt to derive a $DEB_SUITE source from"
  printf '%s\n' "$stanza" >"$APT_DIR/sources.list.d/$DEB_SUITE.sources"
  # Own lists, caches and sources; no update/dpkg hooks (appstream, packagekit,
  # docker-clean) so the system's caches are never touched.
  cat >"$APT_DIR/apt.conf" <<EOF
Dir::Etc::sourcelist "/dev/null";
Dir::Etc::sourceparts "$APT_DIR/sources.list.d";
Dir::Etc::preferencesparts "$APT_DIR/preferences.d";
Dir::State::lists "$APT_DIR/lists";
Dir::Cache "$APT_DIR/cache";
Dir::Cache::archives "$APT_DIR/cache/archives";
Dir::Cache::pkgcache "$APT_DIR/cache/pkgcache.bin";
Dir::Cache::srcpkgcache "$APT_DIR/cache/srcpkgcache.bin";
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Post-Invoke;
#clear DPkg::Pre-Invoke;
#clear DPkg::Pre-Install-Pkgs;
APT::Sandbox::User "root";
EOF
}
rm -rf "$PREFIX" "$ROOT"/.work.*
mkdir -p "$PREFIX/bin" "$PREFIX/py27"
# Scratch space (apt state and downloads), removed at exit.
work=$(mktemp -d "$ROOT/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
APT_DIR="$work/apt"
setup_private_apt
papt() { apt-get -c "$APT_DIR/apt.conf" "$@"; }

# ---------------------------------------------------------- Python 2.7 ----
log "apt: updating the private $DEB_SUITE index"
papt update -qq >&2
log "apt: downloading ${DEB_PKGS[*]}"
(cd "$work" && papt download -qq "${DEB_PKGS[@]}" >&2)
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$PREFIX/py27"
done
rm -f "$work"/*.deb

py27="$PREFIX/py27/usr/bin/python2.7"
[[ -x $py27 ]] || die "python2.7 missing after unpacking"
libssl=$(find "$PREFIX/py27" -name 'libssl.so.1.1' -print -quit)
[[ -n $libssl ]] || die "libssl.so.1.1 missing after unpacking"
libdir_rel=${libssl#"$PREFIX"/}
libdir_rel=${libdir_rel%/*}

# Launchers find everything relative to themselves. The interpreter locates
# its stdlib from its own path, so only LD_LIBRARY_PATH is needed (libssl1.1,
# libffi7). Environment that would leak host packages in is cleared.
cat >"$PREFIX/bin/python2" <<EOF
#!/bin/sh
# Python 2.7 from the Autobahn cache (generated by tests/autobahn/install.sh).
here=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="\$here/$libdir_rel\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
PYTHONNOUSERSITE=1
export LD_LIBRARY_PATH PYTHONNOUSERSITE
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP
exec "\$here/py27/usr/bin/python2.7" "\$@"
EOF
cat >"$PREFIX/bin/wstest" <<'EOF'
#!/bin/sh
# wstest from the Autobahn cache (generated by tests/autobahn/install.sh).
exec "$(dirname "$0")/python2" -c 'import sys; from autobahntestsuite.wstest import run; sys.exit(run())' "$@"
EOF
chmod +x "$PREFIX/bin/python2" "$PREFIX/bin/wstest"
py2="$PREFIX/bin/python2"

"$py2" -c 'import ssl, ctypes, zlib, bz2, hashlib' \
  || die "the unpacked Python 2.7 does not start (missing host library?)"
# Debian compiles the stdlib in its postinst; do it here for faster starts.
"$py2" -m compileall -q "$PREFIX/py27/usr/lib/python2.7" >/dev/null 2>&1 || true

# --------------------------------------------------------- Python pkgs ----
# The host's pip settings (find-links to a local wheel folder, ...) must not
# reach the Python 2 pip; keep index/cert settings. Own pip cache.
pipenv=(env -u PIP_FIND_LINKS -u PIP_NO_INDEX -u PIP_TARGET -u PIP_PREFIX -u PIP_USER
  -u PIP_REQUIRE_VIRTUALENV -u PIP_CONSTRAINT -u PIP_REQUIREMENT -u PIP_ONLY_BINARY
  -u PIP_NO_BINARY -u PYTHONPATH -u PYTHONHOME
  PIP_CACHE_DIR="$ROOT/pip-cache" PIP_DISABLE_PIP_VERSION_CHECK=1)
py2pip=(--no-python-version-warning --no-warn-script-location)

log "pip: bootstrapping ${BOOTSTRAP_PINS[*]}"
"${pipenv[@]}" python3 -m pip download -q --no-deps --only-binary=:all: \
  -d "$work" "pip==$PIP_VERSION" >&2
pipwhl="$work/pip-$PIP_VERSION-py2.py3-none-any.whl"
[[ -f $pipwhl ]] || die "pip $PIP_VERSION wheel was not downloaded"
"${pipenv[@]}" "$py2" "$pipwhl/pip" install -q "${py2pip[@]}" "${BOOTSTRAP_PINS[@]}" >&2

log "pip: installing $SUITE_REQ"
printf '%s\n' "${PY_PINS[@]}" >"$PREFIX/constraints.txt"
# Debian's distutils points C builds (wsaccel) at /usr/include/python2.7;
# the second -I is for the multiarch pyconfig.h.
"${pipenv[@]}" \
  CFLAGS="-I$PREFIX/py27/usr/include/python2.7 -I$PREFIX/py27/usr/include" \
  "$py2" -m pip install -q "${py2pip[@]}" -c "$PREFIX/constraints.txt" \
  "$SUITE_REQ" wsaccel ujson >&2

# Everything must have landed inside the private prefix.
where=$("$py2" -c 'import autobahntestsuite, autobahn, twisted, zope.interface, wsaccel, ujson
import os
print(os.path.dirname(os.path.dirname(autobahntestsuite.__file__)))')
[[ $where == "$PREFIX"/* ]] || die "autobahntestsuite landed in $where, outside $PREFIX"
"$PREFIX/bin/wstest" --autobahnversion >&2 || die "wstest does not run"

touch "$PREFIX/.complete"
# Drop environments built from other pins.
for old in "$ROOT"/ats*; do
  [[ $old == "$PREFIX" || ! -d $old ]] || rm -rf "$old"
done
log "done in $((SECONDS - start)) s"
printf '%s\n' "$PREFIX"
