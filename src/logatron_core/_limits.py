"""Default limits of the protocol and the registry, each with the precedent it follows.

Every limit here is a default: the registry and the connections take their own values, and the
``logatron serve`` command exposes each as a flag.
"""

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_RETAINED",
    "DEFAULT_MAX_STATE_KEYS",
    "DEFAULT_RETENTION_SECONDS",
    "MAX_ERROR_REPLIES_PER_RECEIVE",
    "MAX_KEPT_ERRORS",
    "MAX_LINE_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_PENDING_REPLY_BYTES",
    "MAX_TOKEN_LENGTH",
]

# The original logatron kept the last 128 lines per client.
DEFAULT_BUFFER_SIZE = 128

# Longest line, in bytes, before the newline (a `\r` before it included). Longer lines are cut
# here and marked truncated. 64 KiB is the default of rsyslog's imtcp `MaxMessageSize` ceiling and
# of systemd-journald's line limit (LineMax is 48K); it bounds the memory each connection buffers.
MAX_LINE_BYTES = 64 * 1024

# Replies (PONG, ERR) waiting to be written to one peer. A peer that does not read gets the
# replies past this bound dropped, so it can never make the server wait or grow its memory.
MAX_PENDING_REPLY_BYTES = 64 * 1024

# ERR lines answered for one chunk of input; past it errors are still counted but not answered.
# A peer flooding unknown commands would otherwise make the server build a reply ~7x the size
# of what it sent, only for the adapter to drop it past MAX_PENDING_REPLY_BYTES.
MAX_ERROR_REPLIES_PER_RECEIVE = 100

# Client names and state keys: 1 to 128 characters of `[A-Za-z0-9_.:@-]` (the original accepted
# `\w+`, with no length limit).
MAX_NAME_LENGTH = 128

# Access tokens (``IAM <name> <token>``, ``Authorization: Bearer``): 1 to 1024 characters, no
# control characters, no space or tab at either end (HTTP would drop them). 1024 is 16 times a
# 32-byte secret in hex, and well under the 4 KiB nginx allows for one header line.
MAX_TOKEN_LENGTH = 1024

# Connected clients at once. Each costs one socket and at most buffer_size lines; 10,000 is well
# under a default `ulimit -n` raised for servers and far above the fleets this serves.
DEFAULT_MAX_CLIENTS = 10_000

# State keys per client; a new key past it is refused with `ERR too-many-keys`.
DEFAULT_MAX_STATE_KEYS = 1024

# Disconnected clients stay readable this long (seconds), at most this many of them, oldest
# dropped first. 0 for either gives the original's behaviour: forget a client when it closes.
DEFAULT_RETENTION_SECONDS = 3600.0
DEFAULT_MAX_RETAINED = 1000

# Non-fatal ERR replies a client keeps (the latest ones); a server that answers every line with
# an error must not grow a long-lived client's memory.
MAX_KEPT_ERRORS = 1000
