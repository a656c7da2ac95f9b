"""Who may act, and that a form was sent by the console's own page.

- Reading needs nothing. Actions need the token (CONSOLE_TOKEN or CONSOLE_TOKEN_FILE), given
  once on /login; the signed session cookie (Starlette's SessionMiddleware, itsdangerous) then
  says "signed in" until /logout or the console restarts (its signing key is made at start and
  never leaves the process). The token itself is never stored in the cookie, shown or logged.
- Every form carries a CSRF token: a random value kept in the session and written into each
  form; a POST whose field does not match it is refused (403) before anything else is read. The
  cookie is SameSite=Strict as well, so another site's page cannot send it.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request

CSRF_FIELD = "csrf_token"
SIGNED_IN = "signed_in"


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get(CSRF_FIELD)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return token


def csrf_ok(request: Request, sent: object) -> bool:
    expected = request.session.get(CSRF_FIELD)
    return (isinstance(expected, str) and bool(expected) and isinstance(sent, str)
            and hmac.compare_digest(expected.encode(), sent.encode()))


def token_ok(expected: str | None, given: object) -> bool:
    """Whether `given` is the configured token (never, when none is configured)."""
    return (expected is not None and isinstance(given, str)
            and hmac.compare_digest(expected.encode(), given.encode()))


def signed_in(request: Request) -> bool:
    return request.session.get(SIGNED_IN) is True


def sign_in(request: Request) -> None:
    request.session[SIGNED_IN] = True
    request.session[CSRF_FIELD] = secrets.token_urlsafe(32)  # a new token once signed in


def sign_out(request: Request) -> None:
    request.session.clear()
