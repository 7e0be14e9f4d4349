"""Vehicle identification numbers (ISO 3779): validation and what the WMI says about the maker.

The decoding itself is ``vininfo``'s (a maintained WMI table); here are only the rules the
ledger enforces on top: the exact canonical spelling (17 upper-case characters, no I, O, Q) and
the check digit in position 9 where the region makes it mandatory (North America, under
49 CFR 565, and China, under GB 16735). Contracts call :func:`parse_vin`, so the result must
be deterministic for a given ``vininfo`` version, which the project pins. The model years of
position 10 come from a fixed table here, not from ``vininfo`` (whose list depends on today's
date, so two nodes, or one node replaying old blocks, could disagree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from vininfo import Vin
from vininfo.exceptions import ValidationError as VinValidationError

from blokauto.errors import InputError

VIN_PATTERN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
# First WMI character: 1-5 North America, L China.
CHECK_DIGIT_REGIONS = frozenset("12345L")
# Position 10 (ISO 3779 / 49 CFR 565.15): the model year, a 30-year cycle from 1980.
MODEL_YEAR_CODES = "ABCDEFGHJKLMNPRSTVWXY123456789"
LAST_MODEL_YEAR = 2100      # the latest year a registration may name


@dataclass(frozen=True, slots=True)
class VinInfo:
    vin: str
    wmi: str
    maker: str
    country: str
    region: str
    check_digit_required: bool
    check_digit_ok: bool
    model_years: tuple[int, ...]    # years position 10 may stand for (empty where unused)


def normalise_vin(text: str) -> str:
    """What a person typed (spaces, lower case) to the canonical spelling; API and CLI only."""
    return text.strip().replace(" ", "").upper()


def canonical_vin(text: str) -> str:
    """A typed VIN, normalised and validated (``bad_vin`` otherwise); API and CLI only."""
    vin = normalise_vin(text)
    parse_vin(vin)
    return vin


def parse_vin(vin: str) -> VinInfo:
    """Validate a canonical VIN and decode its maker; raises :class:`InputError` (``bad_vin``).

    Cached: every vehicle transaction checks its VIN at submission and again at execution, and
    decoding the WMI costs ~25 us; a pure function of the VIN (the vininfo version is pinned)."""
    if not isinstance(vin, str) or len(vin) != 17:
        raise InputError("a VIN has exactly 17 characters", code="bad_vin")
    return _parse_vin(vin)


@lru_cache(maxsize=65_536)
def _parse_vin(vin: str) -> VinInfo:
    if not isinstance(vin, str) or len(vin) != 17:
        raise InputError("a VIN has exactly 17 characters", code="bad_vin")
    if not VIN_PATTERN.match(vin):
        raise InputError("a VIN uses only digits and upper-case letters other than I, O and Q", code="bad_vin")
    try:
        decoded = Vin(vin)
    except VinValidationError as exc:
        raise InputError(f"invalid VIN: {exc}", code="bad_vin") from None
    required = vin[0] in CHECK_DIGIT_REGIONS
    check_ok = check_digit(vin) == vin[8]     # our own rule: vininfo may switch it off per brand
    if required and not check_ok:
        raise InputError(f"VIN check digit (position 9) is wrong: {vin[8]!r}, expected {check_digit(vin)!r}",
                         code="bad_vin")
    if required and not model_years(vin[9]):
        raise InputError(f"VIN position 10 ({vin[9]!r}) is not a model-year code", code="bad_vin")
    maker = str(decoded.manufacturer or "")
    if not maker or maker == "UnsupportedBrand":
        maker = "Unknown"
    return VinInfo(
        vin=vin, wmi=vin[:3], maker=maker, country=str(decoded.country or "Unknown"),
        region=str(decoded.region or "Unknown"), check_digit_required=required, check_digit_ok=check_ok,
        model_years=model_years(vin[9]) if required else (),
    )


def model_years(code: str) -> tuple[int, ...]:
    """The years a position-10 code may stand for, newest first; empty for a character that is no
    year code. A fixed table (never today's date): the ledger's own rules bound the year by block time."""
    index = MODEL_YEAR_CODES.find(code)
    if len(code) != 1 or index < 0:
        return ()
    return tuple(range(1980 + index, LAST_MODEL_YEAR + 1, len(MODEL_YEAR_CODES)))[::-1]


_TRANSLITERATION = {**{str(d): d for d in range(10)},
                    **dict(zip("ABCDEFGH", range(1, 9), strict=True)), **dict(zip("JKLMN", range(1, 6), strict=True)),
                    "P": 7, "R": 9, **dict(zip("STUVWXYZ", range(2, 10), strict=True))}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def check_digit(vin: str) -> str:
    """The ISO 3779 / 49 CFR 565 check character for ``vin`` (position 9 ignored)."""
    remainder = sum(_TRANSLITERATION[c] * w for c, w in zip(vin, _WEIGHTS, strict=True)) % 11
    return "X" if remainder == 10 else str(remainder)


def with_check_digit(vin: str) -> str:
    return vin[:8] + check_digit(vin) + vin[9:]
