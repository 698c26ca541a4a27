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


def test_lowercase_partial_percent_hex_and_html_forms_of_a_known_secret_are_masked() -> None:
    secret = "Pa$$/wörd 42"
    r = Redactor([secret])
    raw = secret.encode()
    forms = [
        "Pa%24%24%2Fw%C3%B6rd%2042",  # full, upper case
        "Pa%24%24%2fw%c3%b6rd%2042",  # lower case
        "Pa$$%2Fwörd 42",  # partial
        "Pa%24$/w%c3%B6rd+42",  # partial, mixed case, form space
        raw.hex(), raw.hex().upper(),  # hex
        "Pa&#36;&#x24;/w&#246;rd&#32;42",  # HTML decimal and hex references
        "Pa&#x000024;$/w&#xF6;rd 42",
    ]
    for form in forms:
        out = r(f"echo: <{form}> end")
        assert MASK in out and "rd" not in out.replace("end", ""), (form, out)


def test_the_log_filter_masks_a_known_secret_that_has_no_secret_shape() -> None:
    import logging

    from pullhealth.domain.redact import RedactingFilter

    plain = "correct horse battery staple 42"  # no key=, no Bearer: not secret-shaped
    assert redact(f"said {plain}") == f"said {plain}"
    Redactor([plain])  # the chain learns it (a password of a pull secret)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "registry said %s", (plain,), None)
    RedactingFilter().filter(record)
    assert plain not in record.getMessage() and MASK in record.getMessage()


def test_control_characters_are_escaped_in_every_masked_string_and_log_line() -> None:
    import logging

    from pullhealth.domain.redact import RedactingFilter

    assert Redactor()("linux\x1b[2J\x07/amd64\r\nFAKE\u202e") == "linux\\x1b[2J\\x07/amd64\\x0d\\x0aFAKE\\u202e"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "platform %s", ("a\x1b]0;pwned\x07",), None)
    RedactingFilter().filter(record)
    assert "\x1b" not in record.getMessage() and "\\x1b" in record.getMessage()
