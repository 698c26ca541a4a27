"""Redaction: no password, token or auth blob leaves the process in readable form.

Two layers: exact known secrets (the credentials in use, and their Basic/base64 forms)
are replaced wherever they appear, and shapes that are always secret (Authorization
values, JWTs, ``"auth": "..."`` fields, ``password=`` pairs) are masked even when the
value was never seen.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable

MASK = "***"
_PATTERNS = (
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    (
        re.compile(
            r'("(?:auth|password|identitytoken|identityToken|registrytoken|access_token|'
            r'refresh_token|token)"\s*:\s*")[^"]*(")'
        ),
        r"\1" + MASK + r"\2",
    ),
    (re.compile(r"\b(password|access_token|refresh_token|client_assertion)=[^&\s]+"), r"\1=" + MASK),
)


def _forms(secret: str) -> list[str]:
    forms = [secret, base64.b64encode(secret.encode()).decode()]
    return [f for f in forms if len(f) >= 4]


class Redactor:
    """Masks known secrets and secret-shaped text.

    Args:
        secrets: values to mask wherever they appear (passwords, tokens).
        usernames_passwords: (user, password) pairs whose ``user:password`` base64 form
            (the docker config ``auth`` field, a Basic header) is masked too.
    """

    def __init__(
        self,
        secrets: Iterable[str] = (),
        usernames_passwords: Iterable[tuple[str, str]] = (),
    ) -> None:
        known: list[str] = []
        for secret in secrets:
            known.extend(_forms(secret))
        for user, password in usernames_passwords:
            pair = f"{user}:{password}"
            known.extend([pair, base64.b64encode(pair.encode()).decode()])
        # Longest first, so a secret containing another is masked whole.
        self._known = sorted({k for k in known if k}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """Return text with every secret masked."""
        for secret in self._known:
            text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def redact(text: str) -> str:
    """Mask secret-shaped text when no specific secrets are known."""
    return Redactor()(text)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secret-shaped text in every record it passes.

    The record's message is formatted first (arguments included), masked, and stored back
    with no arguments, so a secret passed as an argument is masked too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        masked = redact(message)
        if masked != message or record.args:
            record.msg = masked
            record.args = None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach :class:`RedactingFilter` to a logger's handlers (root by default) and itself."""
    target = logger or logging.getLogger()
    flt = RedactingFilter()
    target.addFilter(flt)
    for handler in target.handlers:
        handler.addFilter(flt)
