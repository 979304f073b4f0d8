"""Real notification receivers for the tests: an HTTP server taking apprise's json:// posts and
an SMTP server (aiosmtpd) taking mail with a login, both on 127.0.0.1 and random ports.

aiosmtpd (a test-only dependency) is imported only when an SmtpReceiver starts."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import socket
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session


@dataclass
class Post:
    path: str
    payload: dict[str, Any]
    status: int = 200

    @property
    def title(self) -> str:
        return str(self.payload.get("title", ""))

    @property
    def body(self) -> str:
        return str(self.payload.get("message", ""))

    def attachments(self) -> list[tuple[str, bytes]]:
        return [(a["filename"], base64.b64decode(a["base64"]))
                for a in self.payload.get("attachments") or []]


class HttpReceiver:
    """Records every POST; paths listed in ``failing`` answer HTTP 500 (and are recorded too)."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.failing: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(n) or b"{}")
                with receiver.lock:
                    status = 500 if self.path in receiver.failing else 200
                    receiver.posts.append(Post(self.path, payload, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}{path}"

    def at(self, path: str, *, delivered: bool = False) -> list[Post]:
        """Posts to ``path`` (``delivered``: only those answered with 200)."""
        with self.lock:
            return [p for p in self.posts if p.path == path and (p.status == 200 or not delivered)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain", "html"))
        return part.get_content() if part is not None else ""

    def attachments(self) -> list[tuple[str, bytes]]:
        return [(p.get_filename() or "", cast(bytes, p.get_payload(decode=True)))
                for p in self.message.iter_attachments()]


@dataclass
class SmtpReceiver:
    """A local SMTP server with AUTH over plain TCP (auth_require_tls=False), accepting exactly
    ``user`` / ``password``."""

    user: str
    password: str
    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from aiosmtpd.controller import Controller

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                     authenticator=self._authenticate, auth_require_tls=False)
        self.controller.start()

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(), auth_data.password.decode()) == (self.user, self.password)
        self.logins.append((auth_data.login.decode() if isinstance(auth_data, LoginPassword)
                            else "?", ok))
        return AuthResult(success=ok)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not session.authenticated:
            return "530 Authentication required"
        raw = envelope.original_content or envelope.content or b""
        message = email.message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(),
                                           policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 OK"

    def close(self) -> None:
        self.controller.stop()
