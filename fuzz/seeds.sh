#!/usr/bin/env bash
# Writes the seed corpora of the fuzz targets into fuzz/seeds/TARGET/ (committed; the
# fuzzer's growing corpus lives elsewhere, see tests/fuzz.sh). Run it again after changing it.
#
# handshake_and_frames inputs are one flags byte, then the client's bytes (see the table at the
# top of fuzz_targets/handshake_and_frames.rs). The usual flags here:
#   \x00  raw bytes                       \x01  upgrade request + raw bytes (own masks)
#   \x02  upgrade request + frames the harness masks: first header byte, length byte
#         (top bit set = send unmasked), extended length, payload
#   +\x04 tight settings   +\x08 sent in pieces   +\x10 drain first   +\x20 drain after
#   +\x30 client holds its write half open        +\x40 over max_connections  +\x80 per-IP
set -euo pipefail
cd "$(dirname "$0")"

hf=seeds/handshake_and_frames
cf=seeds/config
rm -rf "$hf" "$cf"
mkdir -p "$hf" "$cf"

seed() { printf '%b' "$2" > "$hf/$1"; }  # name, bytes with \x escapes
a125=$(head -c 125 /dev/zero | tr '\0' a)
upgrade='GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'

# After a 101: the WebSocket frame parser and the echo loop.
seed text-then-close           '\x02\x81\x05hello\x88\x02\x03\xe8'
seed fragmented                '\x02\x01\x03hel\x89\x01!\x80\x02lo\x88\x00'
seed ping-pong                 '\x02\x89\x04ping\x8a\x00\x81\x02hi'
seed close-4000-reason         '\x02\x88\x05\x0f\xa0bye'
seed close-1005-not-sendable   '\x02\x88\x02\x03\xed'
seed close-1-byte              '\x02\x88\x01\x03'
seed invalid-utf8              '\x02\x81\x02\xff\xfe'
seed utf8-split-in-fragments   '\x02\x01\x01\xc3\x80\x01\xa9'
seed oversized-length          '\x02\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff'
seed rsv-and-bad-opcode        '\x02\xc1\x01x\x83\x00'
seed unmasked                  '\x02\x81\x85hello'
seed raw-masked-rfc-example    '\x01\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58'
seed raw-unmasked              '\x01\x81\x05Hello'
seed sent-in-pieces            '\x0a\x81\x05hello\x89\x00\x82\x7e\x00\x02ab\x88\x00'
seed drain-at-start            '\x12\x81\x02hi'
seed drain-after-write         '\x22\x81\x02hi'
seed hold-open-tight           '\x36\x81\x02hi'
# Reproducers of open findings (fuzz/README.md), which pass unless WSECHOD_FUZZ_STRICT is set:
seed upgrade-then-fin          '\x02'                   # halfclose: no answer at all
seed text-then-fin             '\x02\x81\x02hi'         # echo: "hi" read, never echoed
seed hold-open-silent          '\x32\x81\x02hi'         # keepalive: spins 90 s (a timeout)
# Tight settings: 125-byte frames, 250-byte messages, a reply prefix, origin and subprotocols.
seed tight-subprotocol-prefix  '\x07\x81\x03abc\x81\x02\xc3\xa9'
seed tight-frame-too-big       '\x06\x82\x7e\x00\x7e'
seed tight-message-too-big     "\\x06\\x02\\x7d${a125}\\x00\\x7d${a125}\\x80\\x01!"
seed tight-partial-request     "\\x34GET /ws HTTP/1.1\\r\\nHost: x\\r\\n"
seed limit-total               '\x42\x81\x02hi'
seed tight-origin-refused      "\\x0c${upgrade}Origin: https://evil.example\\r\\n\\r\\n"
# Raw HTTP: every rejection, and hyper's own answers.
seed get-root                  '\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n'
seed get-ws-plain              '\x08GET /ws HTTP/1.1\r\nHost: x\r\n\r\n'
seed post-with-body            '\x08POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello'
seed head                      '\x08HEAD /ws HTTP/1.1\r\nHost: x\r\n\r\n'
seed http10-upgrade            "\\x08${upgrade/HTTP\/1.1/HTTP/1.0}\\r\\n"
seed version-8                 "\\x08${upgrade/Version: 13/Version: 8}\\r\\n"
seed bad-key                   "\\x08${upgrade/Key: dGhl/Key: !Ghl}\\r\\n"
seed pipelined                 "\\x08GET /x HTTP/1.1\\r\\n\\r\\n${upgrade}\\r\\n\\x81\\x80\\x00\\x00\\x00\\x00"
seed bad-header-line           '\x08GET /ws HTTP/1.1\r\nbad header\r\n\r\n'
seed garbage                   '\x08\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\x00'
# 431: a head over the tight 8 KiB limit.
seed tight-header-too-large    "\\x0cGET /ws HTTP/1.1\\r\\nX: $(head -c 8300 /dev/zero | tr '\0' x)\\r\\n\\r\\n"

# The configuration file.
cp ../etc/wsechod.toml "$cf/shipped.toml"
: > "$cf/empty.toml"
cat > "$cf/every-key.toml" <<'TOML'
[server]
listen = ["127.0.0.1:8080", "[::1]:8080"]
path = "/echo"
handshake_timeout = "5s"
max_header_size = "16KiB"
max_connections = 1000
max_connections_per_ip = 10
worker_threads = 2
allowed_origins = ["https://example.com", "http://localhost:8080"]
require_origin = true
subprotocols = ["chat.v2", "echo"]
require_subprotocol = false

[websocket]
max_message_size = "1MiB"
max_frame_size = 65536
read_buffer_size = "4 KiB"
write_buffer_size = "8KiB"
max_write_buffer_size = "4MiB"
reply_prefix = "echo: "
log_message_content = true
ping_interval = "20s"
pong_timeout = "500ms"
idle_timeout = "5m"
max_lifetime = "1h 30m"
write_timeout = "10s"

[metrics]
enabled = false
listen = "127.0.0.1:0"

[shutdown]
drain_timeout = "0s"
close_reason = "maintenance, back soon"

[log]
level = "info,wsechod=debug"
TOML
printf '[server]\npath = "ws"\n' > "$cf/bad-path.toml"
printf '[websocket]\nmax_frame_size = "2MiB"\nmax_message_size = "1MiB"\n' > "$cf/frame-over-message.toml"
printf '[server]\nhandshake_timeout = 10\n' > "$cf/duration-without-unit.toml"
printf '[server]\nmax_header_size = -1\n' > "$cf/negative-size.toml"
printf '[sever]\npath = "/ws"\n' > "$cf/unknown-section.toml"
printf '[tls]\ncert_file = "/nonexistent.pem"\n' > "$cf/tls-half.toml"
printf '[server\npath = \n' > "$cf/not-toml.toml"
printf '[log]\nlevel = "info,[=="\n' > "$cf/bad-log-filter.toml"
# path: loads, but no client can ask for it (WSECHOD_FUZZ_STRICT=path).
printf '[server]\npath = "/ws#live"\n' > "$cf/path-with-fragment.toml"
# A fuzz finding, minimized: a directive after whitespace holding a multi-byte character (the
# invalid byte loads as U+FFFD) made tracing-subscriber's filter parser panic while validating.
printf '[log]\nlevel=",\tU\xff="' > "$cf/log-filter-space-then-utf8.toml"

echo "seeds: $(find "$hf" -type f | wc -l) in $hf, $(find "$cf" -type f | wc -l) in $cf"
