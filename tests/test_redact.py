"""Secrets never survive redaction."""

import base64

import hypothesis

from pullhealth.domain import redact as redact_module
from pullhealth.domain.redact import MASK, Redactor, redact


def test_known_secrets_and_their_base64_forms_are_masked() -> None:
    r = Redactor(["hunter2-pass"], [("alice", "hunter2-pass")])
    pair = base64.b64encode(b"alice:hunter2-pass").decode()
    text = f"password hunter2-pass, auth {pair}, b64 {base64.b64encode(b'hunter2-pass').decode()}"
    out = r(text)
    assert "hunter2" not in out
    assert pair not in out
    assert out.count(MASK) == 3


def test_secret_shapes_are_masked_without_knowing_them() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    text = (
        f'Authorization: Bearer {jwt} {{"auth": "YWxpY2U6cHc=", "password": "pw"}} '
        "refresh_token=abcdef&x=1 Basic YWxpY2U6cHc9PQ=="
    )
    out = redact(text)
    for secret in (jwt, "YWxpY2U6cHc=", '"pw"', "abcdef", "YWxpY2U6cHc9PQ=="):
        assert secret not in out, secret
    assert "x=1" in out


def test_log_filter_masks_messages_and_arguments(caplog: object) -> None:
    import logging

    from pullhealth.domain.redact import RedactingFilter

    logger = logging.getLogger("pullhealth.test.redact")
    handler_records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_records.append(record)

    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("token %s and header %s", "eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln", "Basic YWxpY2U6cHc9PQ==")
    finally:
        logger.removeHandler(handler)
    text = handler_records[0].getMessage()
    assert "eyJzdWIiOiJ4In0" not in text and "YWxpY2U6cHc9PQ==" not in text
    assert text.startswith("token ")


FRAGMENTS = (
    "Bearer ", "Basic ", "eyJhbGciOiJ", ".eyJzdWIi", ".sig-_x", '"password": "', '"token":"', '"auth" : "',
    '"identityToken": "', "password=", "client_secret=", "access_token=", "https://", "user:", "@host",
    "s3cr3t-V4lue+/=", "<password>", "authentication", " ", "\\\"", "&", "abc123", "Token", "passwd",
)


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(hypothesis.strategies.lists(hypothesis.strategies.sampled_from(FRAGMENTS), max_size=12),
                  hypothesis.strategies.text(max_size=20))
def test_the_quick_precheck_never_skips_a_shape(parts: list[str], noise: str) -> None:
    """shapes() returns early on text without any pattern's literal: the same result as
    applying every pattern."""
    text = "".join(parts) + noise
    full = text
    for pattern, replacement in redact_module._PATTERNS:
        full = pattern.sub(replacement, full)
    assert redact_module.shapes(text) == full
