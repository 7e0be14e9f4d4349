"""The one canonical encoding: RFC 8785 (JCS) JSON restricted to what a ledger needs.

Everything that is hashed or signed goes through :func:`encode`. The restriction (no floats,
integers within ±(2**53-1), ASCII object keys, valid Unicode strings) makes the output of a
sorted-key compact JSON encoder identical to JCS, which the test-suite checks against the
reference ``rfc8785`` package. :func:`decode` accepts only bytes that are already canonical, so
a transaction has exactly one byte form and therefore one hash.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from blokauto.errors import InputError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 32

_LONG_NUMBER = re.compile(rb"[0-9]{16}")


def _refuse_float(text: str) -> Any:
    raise InputError("floats are not allowed; use integers in the smallest unit", code="bad_encoding")


_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(float_hook=_refuse_float)
_plain_decoder = msgspec.json.Decoder()


def check_value(value: Any, depth: int = 0) -> None:
    """Raise :class:`InputError` unless ``value`` is inside the canonical JSON subset.

    Every state write and result is checked, so scalar members of objects and arrays (the usual
    case: flat records) are checked inline instead of by a call each.
    """
    if depth > MAX_DEPTH or (depth == MAX_DEPTH and value and type(value) in (dict, list)):
        raise InputError("JSON nested too deeply", code="bad_encoding")  # (a member would be too deep)
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise InputError("object keys must be ASCII strings", code="bad_encoding")
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    _check_str(item)
            elif kind is int:
                if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    raise InputError("integer outside ±(2**53-1)", code="bad_encoding")
            elif item is not None and kind is not bool:
                check_value(item, depth + 1)
    elif kind is list:
        for item in value:
            kind = type(item)
            if kind is str:
                if not item.isascii():
                    _check_str(item)
            elif kind is int:
                if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    raise InputError("integer outside ±(2**53-1)", code="bad_encoding")
            elif item is not None and kind is not bool:
                check_value(item, depth + 1)
    elif kind is str:
        if not value.isascii():
            _check_str(value)
    elif kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise InputError("integer outside ±(2**53-1)", code="bad_encoding")
    elif value is None or kind is bool:
        pass
    elif kind is float:
        raise InputError("floats are not allowed; use integers in the smallest unit", code="bad_encoding")
    else:
        raise InputError(f"type {kind.__name__} cannot be encoded", code="bad_encoding")


def _check_str(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("string is not valid Unicode", code="bad_encoding") from None


def encode(value: Any) -> bytes:
    """Canonical bytes of a JSON value (validates the subset first)."""
    check_value(value)
    return _encoder.encode(value)


def decode_trusted(data: bytes) -> Any:
    """Parse bytes this node wrote itself (stored state): no canonical check."""
    return _plain_decoder.decode(data)


def encode_trusted(value: Any) -> bytes:
    """Canonical bytes of a value the caller built from checked parts (skips the walk)."""
    return _encoder.encode(value)


def decode(data: bytes, *, walk: bool = True) -> Any:
    """Parse canonical bytes; anything else (whitespace, key order, escapes, duplicates) is refused.

    ``walk=False`` leaves the integer-range and key checks to a caller that knows the shape
    and checks the free-form parts itself (the transaction parser); floats are always refused.
    """
    try:
        value = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise InputError(f"malformed JSON: {exc}", code="malformed_json") from None
    except UnicodeDecodeError:
        raise InputError("malformed JSON: not valid UTF-8", code="malformed_json") from None
    except RecursionError:
        raise InputError("JSON nested too deeply", code="bad_encoding") from None
    # Fast path: floats are refused by the decoder's hook; only long digit runs (possible
    # unsafe integers), non-ASCII text (keys, surrogates) or escapes need the full walk.
    if walk and (not data.isascii() or b"\\u" in data or _LONG_NUMBER.search(data)):
        check_value(value)
    try:
        again = _encoder.encode(value)
    except (UnicodeEncodeError, RecursionError):
        raise InputError("JSON cannot be re-encoded canonically", code="bad_encoding") from None
    if again != data:
        raise InputError(
            "JSON is not in canonical form (RFC 8785: sorted keys, no whitespace, minimal escapes)",
            code="non_canonical",
        )
    return value
