"""nginx in front of gunicorn: where the binary is, and its configuration, generated from the
serve settings at every start (never edited by hand).

What nginx is there for: gunicorn's sync workers serve one connection each, so a client that
sends slowly would hold a worker. nginx reads whole requests (headers and body) before it opens
a connection to gunicorn, and takes whole responses from it before sending them on, so a worker
is busy only while it predicts; slow, stalled and idle clients cost nginx a connection each.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .settings import PAYLOAD_VAR, TIMEOUT_VARS, ServeSettings

# Where Debian's package puts the binary; /usr/sbin is not on an ordinary user's PATH.
SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")
ROUTES = ("/ping", "/invocations", "/execution-parameters")
# A client must send its whole request head within this; and while sending a body, never pause
# longer than BODY_IDLE_SECONDS between two reads (slow but steady uploads go on). nginx then
# closes the connection without an answer: it never answers a client it timed out (logged 408).
HEADER_SECONDS = 10
BODY_IDLE_SECONDS = 10
SEND_SECONDS = 30  # a client that reads no part of the answer for this long is dropped
KEEPALIVE_SECONDS = 75  # idle keep-alive connections (SageMaker's front end reuses them)
# An idle or slow client costs one connection (two file descriptors while proxied); one event-driven
# worker process holds thousands, far beyond what the model workers can answer.
WORKER_CONNECTIONS = 4096
BODY_BUFFER = "256k"  # bodies larger than this wait in a temporary file, not in memory
# Bounds a graceful quit (SIGQUIT): connections still open after this are closed.
SHUTDOWN_SECONDS = 20


def find_nginx() -> str | None:
    """The nginx binary on PATH or in the usual sbin folders, or None."""
    found = shutil.which("nginx")
    if found:
        return found
    for folder in SEARCH_DIRS:
        candidate = Path(folder) / "nginx"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def command(binary: str, config: Path, prefix: Path) -> list[str]:
    """nginx in the foreground on config. ``-e stderr`` (nginx 1.19.5 and later: Debian bookworm has
    1.22) keeps nginx from opening its compiled-in error log before it reads the config; older
    versions (Ubuntu 22.04's 1.18) do not know the option and open that file, as root they can."""
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)",
                      subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30).stderr)
    early_log = found is not None and tuple(int(v) for v in found.groups()) >= (1, 19, 5)
    return [binary, "-c", str(config), "-p", str(prefix), *(["-e", "stderr"] if early_log else [])]


@dataclass(frozen=True)
class Layout:
    """nginx's files under the serve's scratch folder."""
    root: Path  # config, pid file, temporary bodies and responses
    socket: Path  # gunicorn's unix socket

    @property
    def config(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.root / "nginx.pid"


def worker_user() -> str | None:
    """The ``user`` line: nginx's workers, which parse what clients send, run as nobody when the
    master runs as root (as in the image); otherwise as whoever started serve."""
    if os.geteuid() != 0:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrgid(nobody.pw_gid).gr_name
    except KeyError:
        return None
    return f"{nobody.pw_name} {group}"


def _json_body(code: str, message: str) -> str:
    """A JSON error body for nginx's ``return``; message is ours (no client text in it) and may use
    nginx variables that hold digits only."""
    for forbidden in ("'", '"', "\\"):
        if forbidden in message:
            raise ValueError(f"{message!r}: no quotes or backslashes in an nginx JSON body")
    return "'{\"error\":\"%s\",\"message\":\"%s\"}\\n'" % (code, message)


def routes(settings: ServeSettings) -> tuple[str, ...]:
    """The paths routed to gunicorn as they are (a multi-model server also its /models/...)."""
    return ROUTES + (("/models",) if settings.multi_model else ())


def _errors(settings: ServeSettings) -> dict[int, tuple[str, str]]:
    """nginx's own answers, as our JSON bodies. $too_large_size holds digits or nothing (a map below)."""
    limit = settings.max_payload_bytes
    return {
        400: ("bad_request", "the request is not valid HTTP"),
        404: ("not_found", "this server answers " + ", ".join(routes(settings))),
        405: ("method_not_allowed", "the method is not allowed here"),
        411: ("length_required", "the request needs a Content-Length"),
        413: ("payload_too_large", f"the body is ${{too_large_size}}{limit} bytes ({settings.max_payload_mb} MB, "
                                   f"{PAYLOAD_VAR})"),
        414: ("uri_too_long", "the request URI is too long"),
        494: ("request_header_too_large", "a request header is too large"),
        500: ("internal_error", "the proxy failed"),
        501: ("not_implemented", "the transfer encoding is not supported"),
        502: ("bad_gateway", "the model server is not answering"),
        503: ("service_unavailable", "the model server is not available"),
        504: ("gateway_timeout", f"the model server did not answer within {settings.timeout} s ({TIMEOUT_VARS[0]})"),
        505: ("http_version_not_supported", "the HTTP version is not supported"),
    }


def render(settings: ServeSettings, layout: Layout, user: str | None = None) -> str:
    """The whole nginx.conf for these settings (nginx runs with ``-c`` on it, in the foreground)."""
    listen = str(settings.port) if settings.host in ("0.0.0.0", "") else f"{settings.host}:{settings.port}"
    if ":" in settings.host and not settings.host.startswith("["):  # an IPv6 address
        listen = f"[{settings.host}]:{settings.port}"
    root = layout.root
    errors = _errors(settings)
    error_pages = "\n".join(f"        error_page {status} @error_{status};" for status in errors)
    error_locations = "\n".join(
        f"        location @error_{status} {{\n"
        f"            default_type application/json;\n"
        f"            return {status} {_json_body(code, message)};\n"
        f"        }}" for status, (code, message) in errors.items())
    locations = "\n".join(f"        location = {route} {{\n            proxy_pass http://model_server;\n        }}"
                          for route in routes(settings))
    if settings.multi_model:  # the multi-model API: /models/NAME and /models/NAME/invoke
        locations += "\n        location /models/ {\n            proxy_pass http://model_server;\n        }"
    return f"""# Generated by ssd-detector serve at start; edits are lost at the next start.
{f"user {user};" if user else ""}
daemon off;
worker_processes 1;
worker_rlimit_nofile {WORKER_CONNECTIONS * 2 + 64};
worker_shutdown_timeout {SHUTDOWN_SECONDS}s;
pid {layout.pid_file};
error_log stderr warn;

events {{
    worker_connections {WORKER_CONNECTIONS};
}}

http {{
    log_format ssd '$remote_addr "$request" $status $body_bytes_sent $request_time s '
                   'upstream $upstream_response_time s';
    access_log /dev/stdout ssd;
    server_tokens off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

    # The size for the 413 message: a declared Content-Length (digits only, nginx checks it), else
    # none (a chunked body found too large while reading it).
    map $http_content_length $too_large_size {{
        "" "over the limit of ";
        default "$http_content_length bytes, over the limit of ";
    }}

    upstream model_server {{
        server unix:{layout.socket} fail_timeout=0;
    }}

    server {{
        listen {listen} backlog=4096;
        client_max_body_size {settings.max_payload_bytes};
        client_body_buffer_size {BODY_BUFFER};
        client_header_timeout {HEADER_SECONDS}s;
        client_body_timeout {BODY_IDLE_SECONDS}s;
        send_timeout {SEND_SECONDS}s;
        keepalive_timeout {KEEPALIVE_SECONDS}s;

        # gunicorn sees only complete requests, and hands its answer over at once.
        proxy_request_buffering on;
        proxy_buffering on;
        proxy_connect_timeout 10s;
        proxy_send_timeout {settings.timeout}s;
        proxy_read_timeout {settings.timeout}s;
        proxy_next_upstream off;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;

{locations}
        location / {{
            return 404;
        }}

{error_pages}
{error_locations}
    }}
}}
"""


def write_config(settings: ServeSettings, layout: Layout) -> Path:
    """Writes nginx.conf under layout.root (made traversable for nginx's workers) and returns it."""
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o755)
    layout.config.write_text(render(settings, layout, worker_user()))
    return layout.config
