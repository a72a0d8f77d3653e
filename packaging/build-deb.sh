#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (configured in Cargo.toml) into target/debian/.
# cargo-deb is installed on first use into ~/.cache/wsechod/tools. Extra arguments go to
# cargo-deb, e.g. `--deb-revision 2 --no-build` to repackage the same binary as a newer
# revision (the e2e upgrade test does that).
set -euo pipefail
cd "$(dirname "$0")/.."

readonly CARGO_DEB_VERSION=3.8.0
tools=${XDG_CACHE_HOME:-$HOME/.cache}/wsechod/tools
if ! "$tools/bin/cargo-deb" --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
  echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION into $tools" >&2
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root "$tools" >&2
fi
exec "$tools/bin/cargo-deb" --locked "$@"
