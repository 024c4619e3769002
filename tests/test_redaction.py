"""Redaction of secret values (activities/execution_environment.py `Redactor`) in the forms a
tool prints them: raw, standard and URL-safe base64 (padded or not, whole or inside a longer
encoded string at any byte alignment) and lower- or upper-case hex. Each form must come out as
the `[REDACTED]` marker, not merely be missing."""

from __future__ import annotations

import base64

import pytest

from activities.execution_environment import REDACTED, Redactor, encoded_forms

# Its base64 holds `+` and `/`, so the URL-safe alphabet really differs.
SECRET = "tok>>?~~secret-9f"
REDACT = Redactor([SECRET])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def urlsafe(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


RAW = SECRET.encode()
FORMS = {
    "raw": SECRET,
    "base64": b64(RAW),
    "base64 unpadded": b64(RAW).rstrip("="),
    "url-safe base64": urlsafe(RAW),
    "url-safe base64 unpadded": urlsafe(RAW).rstrip("="),
    "hex": RAW.hex(),
    "HEX": RAW.hex().upper(),
}


def test_the_forms_differ() -> None:
    assert FORMS["base64"] != FORMS["url-safe base64"]
    assert FORMS["base64"].endswith("=")


@pytest.mark.parametrize("form", FORMS)
def test_each_form_is_replaced_by_the_marker(form: str) -> None:
    text = f"before {FORMS[form]} after"
    assert REDACT(text) == f"before {REDACTED} after"


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"abc", b"user:"])
@pytest.mark.parametrize("suffix", [b"", b"z", b"zz", b"\n"])
@pytest.mark.parametrize("encode", [b64, urlsafe], ids=["standard", "url-safe"])
def test_a_secret_inside_a_longer_encoded_string_is_redacted(
    prefix: bytes, suffix: bytes, encode: object
) -> None:
    """Whatever the bytes around it (a Basic auth `user:secret`, a JSON blob), the characters
    that encode the secret alone are replaced; the encoded neighbours may stay."""
    assert callable(encode)
    encoded: str = encode(prefix + RAW + suffix)
    redacted = REDACT(f"Authorization: Basic {encoded}")
    assert REDACTED in redacted
    # What is left of the encoding is at most the characters shared with the neighbours.
    left = redacted.removeprefix("Authorization: Basic ").split(REDACTED)
    assert len(left) == 2 and len(left[0]) <= len(encode(prefix)) + 1, redacted


def test_values_and_mappings_are_redacted_in_every_form() -> None:
    value = {"out": [FORMS["hex"], {"k": FORMS["url-safe base64 unpadded"]}], FORMS["raw"]: 1}
    assert REDACT.value(value) == {"out": [REDACTED, {"k": REDACTED}], REDACTED: 1}


def test_short_encodings_do_not_redact_ordinary_text() -> None:
    # The aligned base64 of a 4-character secret is 4 characters: too short to replace.
    redactor = Redactor(["abcd"])
    assert all(len(form) >= 6 for form in redactor.values if form != "abcd")
    assert redactor("dGVzdA YWJj plain") == "dGVzdA YWJj plain"
    assert redactor(b64(b"abcd")) == REDACTED
    assert redactor(b"abcd".hex()) == REDACTED
    assert SECRET in encoded_forms(SECRET) and RAW.hex() in encoded_forms(SECRET)
