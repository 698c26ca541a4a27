"""Redaction: no password, token or auth blob leaves the process in readable form.

Redaction works on values, never on serialized output: callers mask every string of a
result (:meth:`Redactor.value`, ``pullhealth.domain.diagnose.redacted``) and only then format or
``json.dumps`` it, so escaping cannot hide a secret and masking cannot break the syntax.
Long text is cut only after masking (:func:`clip`), so no prefix of a secret survives.

Two layers:

- exact known secrets (the credentials of the run) in every encoding they travel in: raw,
  base64 (standard, unpadded, URL-safe), ``user:password`` and its base64 (a Basic
  header, the docker config ``auth`` field), JSON-escaped (ASCII and UTF-8), URL-encoded
  (``%XX`` and form ``+``), and Python ``repr`` escaping;
- shapes that are always secret even when the value was never seen: Authorization values
  (``Bearer``/``Basic`` followed by a token-like value), JWTs, ``"password": "..."``-style
  JSON fields, ``password=...`` pairs and ``user:password@`` in URLs. The shapes match
  secret-shaped values only: prose (``Basic authentication``) and placeholders
  (``<password>``) are left alone.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable
from typing import TypeVar, cast
from urllib.parse import quote, quote_plus

MASK = "***"
# Shorter values are too likely to be ordinary words to be masked wherever they appear.
MIN_SECRET = 4

T = TypeVar("T")

# A token-like value: base64/base64url/JWT characters, at least one digit or symbol (so
# an English word such as "authentication" is not one), not a ``key=value`` parameter.
_TOKEN = r"(?![A-Za-z_]+=[\"\w])(?=[A-Za-z0-9._~+/-]*[0-9._~+/-])[A-Za-z0-9._~+/-]{8,}=*"
_SECRET_KEYS = (
    r"auth|password|passwd|secret|client_secret|identitytoken|identityToken|registrytoken|"
    r"registryToken|access_token|refresh_token|id_token|token|client_assertion"
)
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(Bearer|Basic)(\s+)" + _TOKEN), r"\1\2" + MASK),
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    # "key": "value" (JSON, escapes included); placeholders like "<password>" stay.
    (
        re.compile(r'("(?:' + _SECRET_KEYS + r')"\s*:\s*")(?!<[\w-]+>")(?:[^"\\]|\\.)+(")'),
        r"\1" + MASK + r"\2",
    ),
    # key=value in forms, query strings and command lines; =<placeholder> stays.
    (
        re.compile(r"\b(password|passwd|client_secret|access_token|refresh_token|client_assertion)=(?!<)"
                   r"[^&\s\"',;)>]+"),
        r"\1=" + MASK,
    ),
    # scheme://user:password@host; scheme://<user>:<password>@host stays.
    (re.compile(r"(://[^/\s:@]+:)(?!<[\w-]+>@)[^/\s@]+@"), r"\1" + MASK + "@"),
)
# A literal every pattern above needs (a secret key name, a scheme, an auth scheme, a JWT
# head): text without any is left as is after one search instead of one per pattern
# (pod diagnosis masks a few hundred strings per pod).
_MAYBE = re.compile(r"Bearer|Basic|eyJ|auth|passw|secret|token|Token|client_assertion|://")


# What a terminal, a log line or ``kubectl describe`` would interpret rather than show: C0
# and C1 controls and DEL (ESC sequences, CR overwrites, forged line breaks), the line and
# paragraph separators and the bidirectional overrides (text that reads other than it is).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable_text(text: str, keep: str = "") -> str:
    """``text`` with every control character escaped (``\\x1b``): what every surface shows
    of a string that came from a remote (status, Events, annotations, CLI, logs).

    Args:
        text: any text.
        keep: controls left as they are (``"\\n"`` for a traceback in a log).
    """
    if not _UNPRINTABLE.search(text):
        return text
    if keep:
        return "".join(ch if ch in keep else _UNPRINTABLE.sub(_escape, ch) for ch in text)
    return _UNPRINTABLE.sub(_escape, text)


def shapes(text: str) -> str:
    """Mask the secret shapes (not the known secrets) in text."""
    if not _MAYBE.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def encodings(secret: str) -> set[str]:
    """Every form a secret is sent or echoed in (those of at least :data:`MIN_SECRET`)."""
    raw = secret.encode("utf-8", "surrogatepass")
    std = base64.b64encode(raw).decode()
    forms = {
        secret,
        std,
        std.rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        repr(secret)[1:-1],
        secret.encode("unicode_escape").decode(),
        raw.hex(),
        raw.hex().upper(),
    }
    return {f for f in forms if len(f) >= MIN_SECRET}


_HTML_NAMES = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos"}


def _char_forms(ch: str) -> str:
    """A regex for one character of a secret in any of the forms text carries it in:
    itself, percent-encoded (either case, its UTF-8 bytes), ``+`` for a space, an HTML
    decimal or hex character reference, or its named entity."""
    forms = [re.escape(ch)]
    forms.append("".join(f"%(?i:{b:02x})" for b in ch.encode("utf-8", "surrogatepass")))
    forms.append(f"&#0*{ord(ch)};")
    forms.append(f"&#[xX]0*(?i:{ord(ch):x});")
    if ch in _HTML_NAMES:
        forms.append(f"&{_HTML_NAMES[ch]};")
    if ch == " ":
        forms.append(r"\+")
    return "(?:" + "|".join(forms) + ")"


def flexible(secret: str) -> re.Pattern[str]:
    """A secret with each character in any form (:func:`_char_forms`): partial or
    lowercase percent-encoding and HTML character references of it are found too."""
    return re.compile("".join(_char_forms(ch) for ch in secret))


class Redactor:
    """Masks known secrets (in all their encodings) and secret-shaped text.

    Args:
        secrets: values to mask wherever they appear (passwords, tokens).
        usernames_passwords: (user, password) pairs whose ``user:password`` forms (the
            docker config ``auth`` field, a Basic header) are masked too.
    """

    def __init__(
        self,
        secrets: Iterable[str] = (),
        usernames_passwords: Iterable[tuple[str, str]] = (),
        *,
        feeds_logs: bool = True,
    ) -> None:
        self._known: list[str] = []
        self._seen: set[str] = set()
        self._flexible: list[re.Pattern[str]] = []
        self._pending: list[str] = []  # secrets whose flexible pattern is not compiled yet
        self._feeds_logs = feeds_logs
        self.add(secrets, usernames_passwords)

    def add(self, secrets: Iterable[str] = (), usernames_passwords: Iterable[tuple[str, str]] = ()) -> None:
        """Learn more secrets (a token obtained during the run)."""
        known = set(self._known)
        fresh: list[str] = []
        for secret in secrets:
            if secret and secret not in self._seen:
                self._seen.add(secret)
                known |= encodings(secret)
                fresh.append(secret)
        for user, password in usernames_passwords:
            if password:
                known |= encodings(f"{user}:{password}") | encodings(password)
                fresh.extend(s for s in (password, f"{user}:{password}") if s not in self._seen)
                self._seen.update((password, f"{user}:{password}"))
        self._pending.extend(s for s in fresh if len(s) >= MIN_SECRET)
        if fresh and self._feeds_logs:
            LOG_SECRETS.learn(fresh)
        # Longest first, so a secret containing another is masked whole.
        self._known = sorted(known, key=len, reverse=True)

    @property
    def known(self) -> bool:
        """Whether any exact secret is known."""
        return bool(self._known)

    def exact(self, text: str) -> str:
        """Mask the known secrets only (for text still to be parsed, like a header)."""
        for secret in self._known:
            if secret in text:
                text = text.replace(secret, MASK)
        if ("%" in text or "&" in text) and (self._pending or self._flexible):
            if self._pending:  # compiled on first need: most texts never carry an escape
                self._flexible.extend(flexible(s) for s in self._pending)
                self._pending = []
            for pattern in self._flexible:
                text = pattern.sub(MASK, text)
        return text

    def __call__(self, text: str) -> str:
        """Return text with every secret masked and every control character escaped."""
        return printable_text(shapes(self.exact(text)))

    def bytes(self, data: bytes) -> bytes:
        """Mask the known secrets (not the shapes) in raw bytes, e.g. a response body."""
        for secret in self._known:
            encoded = secret.encode("utf-8", "surrogatepass")
            if encoded in data:
                data = data.replace(encoded, MASK.encode())
        return data

    def value(self, value: T) -> T:
        """Mask every string inside a JSON-like value (dicts, lists, tuples), keys included."""
        return cast(T, self._walk(value))

    def _walk(self, value: object) -> object:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self._walk(k): self._walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._walk(v) for v in value)
        return value


_SHAPES = Redactor(feeds_logs=False)


class _LogSecrets:
    """The secrets the process learned lately (bounded): the log filter masks their values
    wherever they appear, not only secret-shaped text."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._order: dict[str, None] = {}
        self._redactor = Redactor(feeds_logs=False)

    def learn(self, secrets: Iterable[str]) -> None:
        """Remember values; past ``limit`` the older half is forgotten (one rebuild)."""
        fresh = [s for s in secrets if len(s) >= MIN_SECRET and s not in self._order]
        if not fresh:
            return
        self._order.update(dict.fromkeys(fresh))
        if len(self._order) > self.limit:
            self._order = dict.fromkeys(list(self._order)[-(self.limit // 2) :])
            self._redactor = Redactor(self._order, feeds_logs=False)
        else:
            self._redactor.add(fresh)

    def __call__(self, text: str) -> str:
        return self._redactor.exact(text)


LOG_SECRETS = _LogSecrets()


def redact(text: str) -> str:
    """Mask secret-shaped text when no specific secrets are known."""
    return _SHAPES(text)


def clip(text: str, limit: int, redactor: Redactor = _SHAPES) -> str:
    """Mask, then cut to ``limit`` characters (never the other way round)."""
    masked = redactor(text)
    return masked if len(masked) <= limit else masked[: max(limit - 1, 0)] + "…"


def one_line(text: str, limit: int = 300, redactor: Redactor = _SHAPES) -> str:
    """Masked, single-line and bounded: for exception messages shown to people."""
    return clip(" ".join(text.split()), limit, redactor)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secret-shaped text in every record it passes.

    The record's message is formatted first (arguments included), masked, and stored back
    with no arguments, so a secret passed as an argument is masked too. Exception text
    (``exc_info``) is formatted and masked as well.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        masked = printable_text(LOG_SECRETS(shapes(message)))
        if masked != message or record.args:
            record.msg = masked
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = printable_text(LOG_SECRETS(shapes(text)), keep="\n")
            record.exc_info = None
            record.msg = f"{record.msg}\n{record.exc_text}"
            record.exc_text = None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach :class:`RedactingFilter` to a logger's handlers (root by default) and itself."""
    target = logger or logging.getLogger()
    flt = RedactingFilter()
    target.addFilter(flt)
    for handler in target.handlers:
        handler.addFilter(flt)
