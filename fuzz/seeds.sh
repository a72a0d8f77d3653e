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
df=seeds/deflate
rm -rf "$hf" "$cf" "$df"
mkdir -p "$hf" "$cf" "$df"

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

# h2c (HTTP/2 with prior knowledge, raw mode; +\x30 the client holds its write half open so
# that the streams get answered): the preface, SETTINGS, then an extended
# CONNECT (RFC 8441) for /ws as HPACK literals without indexing, and WebSocket frames in DATA.
h2frame() {  # type, flags, stream, payload with \x escapes
    local n
    n=$(printf '%b' "$4" | wc -c)
    printf '\\x%02x\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x%02x%s' \
        $((n >> 16)) $(((n >> 8) & 255)) $((n & 255)) "$1" "$2" "$3" "$4"
}
lit() { printf '\\x00\\x%02x%s\\x%02x%s' "${#1}" "$1" "${#2}" "$2"; }  # name, value
preface='PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
connect="$(lit :method CONNECT)$(lit :protocol websocket)$(lit :scheme http)$(lit :path /ws)$(lit :authority localhost)$(lit sec-websocket-version 13)"
settings=$(h2frame 4 0 0 '')
seed h2c-connect-echo          "\\x30${preface}${settings}$(h2frame 1 4 1 "$connect")$(h2frame 0 0 1 '\x81\x82\x00\x00\x00\x00hi')$(h2frame 0 0 1 '\x88\x82\x00\x00\x00\x00\x03\xe8')"
# With permessage-deflate: "Hello" compressed as in RFC 7692 section 7.2.3.1, RSV1 set.
seed h2c-connect-deflate       "\\x30${preface}${settings}$(h2frame 1 4 1 "${connect}$(lit sec-websocket-extensions permessage-deflate)")$(h2frame 0 0 1 '\xc1\x87\x00\x00\x00\x00\xf2\x48\xcd\xc9\xc9\x07\x00')"
seed h2c-two-streams-reset     "\\x34${preface}${settings}$(h2frame 1 4 1 "$connect")$(h2frame 1 4 3 "$connect")$(h2frame 3 0 1 '\x00\x00\x00\x08')$(h2frame 0 1 3 '\x81\x80\x00\x00\x00\x00')"
seed h2c-preface-then-garbage  "\\x08${preface}\\x00\\x00\\x01\\x09\\x00\\x00\\x00\\x00\\x00x"

# deflate inputs: flags (bits 0-1 settings: 0 defaults, 1 tight with context takeover, 2 64 KiB
# messages, 3 compression off; +\x04 in pieces; +\x08 drain), the offer byte (+\x01
# server_no_context_takeover, +\x02 client_no_context_takeover, +\x04 server_max_window_bits=lo,
# +\x08 client_max_window_bits, +\x10 =hi, +\x20 junk, +\x40 second offer, +\x80 none), the
# window-bits byte (hi, lo), then operations (see fuzz_targets/deflate.rs): \x00/\x01 text/binary
# compressed (argument byte: fragments-1, spoil<<2, repeat<<5; length; payload), \x02 bomb (N×32
# zero bytes), \x03 a plain frame, \x04 close, \x05 raw bytes with RSV1.
dseed() { printf '%b' "$2" > "$df/$1"; }
dseed echo                     '\x00\x00\x00\x00\x00\x05hello\x01\x00\x03abc\x04\x03\xe8'
dseed echo-context-takeover    '\x01\x18\x9c\x10\x20\x0ahellohello\x00\x00\x05hello\x80\x00\x02hi'
dseed echo-window-bits         '\x00\x1f\xa9\x91\x01\x20abcdefghijklmnopqrstuvwxyz012345\x91\x00\x01a'
dseed fragmented               '\x00\x00\x00\x98\x23\x0ahello, how\x90\x02\x04abcd'
dseed fragmented-tight         '\x05\x00\x00\x90\x03\x40The quick brown fox jumps over the lazy dog, again and again!!!!'
dseed bomb-over-limit          '\x02\x00\x00\x02\xff\xff'
dseed bomb-under-limit         '\x00\x00\x00\x02\x04\x00\x12\x03\xff'
dseed bomb-tight-fragmented    '\x01\x08\x00\x32\x00\x10'
dseed corrupt-flip             '\x00\x00\x00\x00\x0c\x05hello\x07\x01\x00\x02hi'
dseed corrupt-truncated        '\x00\x02\x00\x01\x10\x08abcdabcd\x05\x01\x00\x01x'
dseed corrupt-junk             '\x00\x00\x00\x00\x18\x02hi\xff'
dseed corrupt-raw              '\x00\x00\x00\x05\x04\xff\xff\xff\xff'
dseed rsv1-on-continuation     '\x00\x00\x00\x00\x15\x08abcdefgh'
dseed rsv1-on-ping             '\x00\x00\x00\x00\x14\x02hi'
dseed bfinal                   '\x01\x00\x00\x00\x1c\x05hello\x00\x00\x05world'
dseed junk-offer-rsv1          '\x00\x20\x00\x00\x00\x02hi'
dseed second-offer             '\x00\x64\x08\x00\x00\x02hi'
dseed compression-off          '\x03\x00\x00\x03\x81\x02hi\x00\x00\x02hi'
# Empty messages after another (zlib flushes nothing for them: RFC 7692 makes each one 0x00),
# with context takeover both ways (settings 1); the second is the first finding, minimized.
dseed empty-after-another      '\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x05hello\x00\x00\x00'
dseed empty-three-then-cut     '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x032\x00\x10'
# RSV1 with RSV2 and RSV3 on a plain frame after a compressed message: was inflated (1007),
# not refused (1002). The finding as found, then minimized.
dseed rsv123-found             '\x00\x1f\xa9\x91\x01\x20\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x00\x65\x66\x67\x68\x69\x6a\x00\x32\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x6b\x72\x73\x74\x75\x76\x77\x78\x79\x7a\x30\x30\x70\x72\x6f\x63\x32\x33\x9a\x34\x31\x34\x61'
dseed rsv123                   '\x00\x00\x00\x03\xf2\x03xyz'
# A bomb with RSV1 but no extension (the offer declined), its frame over max_frame_size: 1009
# or 1002 (a finding in the harness's expectations).
dseed bomb-declined-offer      '\x02\x05\x00\x02\xff\xff'
dseed plain-between            '\x06\x00\x00\x03\x81\x02hi\x01\x00\x02\x00\x01\x03\x89\x01p'

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

echo "seeds: $(find "$hf" -type f | wc -l) in $hf, $(find "$df" -type f | wc -l) in $df, $(find "$cf" -type f | wc -l) in $cf"
