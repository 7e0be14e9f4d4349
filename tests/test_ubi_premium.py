"""Usage-based insurance premiums (integer cents, explained term by term) and claim triggers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer
from blokauto.errors import InputError
from blokauto.vehicledata.crash import sample_record, summary
from blokauto.vehicledata.insurance import (
    ODOMETER_TOLERANCE_M,
    Aggregates,
    Product,
    claim_due,
    claim_flags,
    half_up_div,
    money,
    parse_aggregates,
    parse_product,
    premium,
)

FAST = settings(max_examples=300, deadline=None)

PRODUCT = {
    "currency": "EUR", "base_cents": 3_000, "per_km_cents": 5, "per_hard_braking_cents": 50,
    "per_over_limit_minute_cents": 10, "per_night_km_cents": 2,
}
USAGE = {"distance_m": 1_234_567, "hard_braking": 3, "over_limit_s": 95, "night_distance_m": 100_499,
         "samples": 5_000}
ZERO = {"distance_m": 0, "hard_braking": 0, "over_limit_s": 0, "night_distance_m": 0, "samples": 0}


def by_term(result: Any) -> dict[str, dict[str, Any]]:
    return {t["term"]: t for t in result.terms}


def code_of(exc_info: pytest.ExceptionInfo[Any]) -> str:
    return exc_info.value.code


# -- exact examples --------------------------------------------------------------------------


def test_hand_computed_premium() -> None:
    result = premium(PRODUCT, USAGE)
    # 1 234 567 m -> 1235 km (half-up) x 5 = 6175; 3 x 50 = 150; 95 s -> 2 min (half-up) x 10 = 20;
    # 100 499 m -> 100 km x 2 = 200; base 3000: total 9545 cents
    assert result.total_cents == 9_545 and result.currency == "EUR"
    assert [(t["term"], t["quantity"], t["unit"], t["rate_cents"], t["cents"]) for t in result.terms] == [
        ("base", 1, "period", 3_000, 3_000),
        ("distance", 1_235, "km", 5, 6_175),
        ("hard_braking", 3, "event", 50, 150),
        ("over_limit", 2, "min", 10, 20),
        ("night", 100, "km", 2, 200),
    ]
    assert by_term(result)["distance"]["text"] == "1234567 m driven: 1235 km x 5 cents = 61.75 EUR"
    assert set(result.terms[0]) == {"term", "quantity", "unit", "rate_cents", "cents", "text"}
    canonical.encode({"total": result.total_cents, "terms": result.terms})     # ledger-ready, no floats


def test_discount_and_surcharge_rounding() -> None:
    discounted = premium({**PRODUCT, "adjustment_bp": -1_000}, USAGE)
    adj = by_term(discounted)["adjustment"]
    # 10 % of 9545 = 954.5 -> -954.5 rounds half-up (towards +infinity) to -954
    assert (adj["quantity"], adj["unit"], adj["rate_cents"], adj["cents"]) == (-1_000, "bp", 9_545, -954)
    assert discounted.total_cents == 8_591
    surcharged = premium({**PRODUCT, "adjustment_bp": 1_000}, USAGE)
    assert by_term(surcharged)["adjustment"]["cents"] == 955 and surcharged.total_cents == 10_500
    assert "adjustment" not in by_term(premium(PRODUCT, USAGE))
    free = premium({**PRODUCT, "adjustment_bp": -10_000}, USAGE)
    assert free.total_cents == 0


def test_half_up_boundaries() -> None:
    km = {m: by_term(premium(PRODUCT, {**ZERO, "distance_m": m, "samples": 1}))["distance"]["quantity"]
          for m in (0, 499, 500, 1_499, 1_500, 2_000)}
    assert km == {0: 0, 499: 0, 500: 1, 1_499: 1, 1_500: 2, 2_000: 2}
    minutes = {s: by_term(premium(PRODUCT, {**ZERO, "over_limit_s": s, "samples": 1}))["over_limit"]["quantity"]
               for s in (29, 30, 89, 90, 120)}
    assert minutes == {29: 0, 30: 1, 89: 1, 90: 2, 120: 2}
    assert [half_up_div(n, 10) for n in (-16, -15, -14, 14, 15, 16)] == [-2, -1, -1, 1, 2, 2]
    assert money(-954, "EUR") == "-9.54 EUR" and money(5, "USD") == "0.05 USD"


def test_caps() -> None:
    capped = premium({**PRODUCT, "max_premium_cents": 9_000}, USAGE)
    cap = by_term(capped)["cap_max"]
    assert capped.total_cents == 9_000
    assert (cap["quantity"], cap["rate_cents"], cap["cents"]) == (9_000, 9_545, -545)
    floored = premium({**PRODUCT, "min_premium_cents": 5_000}, ZERO)
    assert floored.total_cents == 5_000 and by_term(floored)["cap_min"]["cents"] == 2_000
    assert "cap_max" not in by_term(premium({**PRODUCT, "max_premium_cents": 9_545}, USAGE))
    # a credit per km can never take the premium below zero (the default minimum)
    credit = premium({**PRODUCT, "per_km_cents": -10}, USAGE)
    assert credit.total_cents == 0 and by_term(credit)["cap_min"]["cents"] == -(3_000 - 12_350 + 370)
    assert premium({**PRODUCT, "min_premium_cents": 100, "max_premium_cents": 100}, USAGE).total_cents == 100


def test_structs_accepted() -> None:
    assert premium(Product(**PRODUCT), Aggregates(**USAGE)) == premium(PRODUCT, USAGE)
    assert parse_product(PRODUCT) == Product(**PRODUCT)
    assert parse_aggregates(USAGE) == Aggregates(**USAGE)


# -- error codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("product", [
    {k: v for k, v in PRODUCT.items() if k != "base_cents"},
    {**PRODUCT, "base_cents": -1},
    {**PRODUCT, "base_cents": 10.0},
    {**PRODUCT, "base_cents": True},
    {**PRODUCT, "per_km_cents": "5"},
    {**PRODUCT, "per_km_cents": 1_000_001},
    {**PRODUCT, "currency": "eur"},
    {**PRODUCT, "adjustment_bp": -10_001},
    {**PRODUCT, "adjustment_bp": 10_001},
    {**PRODUCT, "min_premium_cents": 2, "max_premium_cents": 1},
    {**PRODUCT, "max_premium_cents": -5},
    {**PRODUCT, "vat": 19},
    [PRODUCT],
    None,
])
def test_bad_product(product: Any) -> None:
    with pytest.raises(InputError) as exc:
        premium(product, USAGE)
    assert code_of(exc) == "bad_product"


@pytest.mark.parametrize("aggregates", [
    {**USAGE, "night_distance_m": USAGE["distance_m"] + 1},
    {**ZERO, "distance_m": 10},
    {**ZERO, "hard_braking": 1},
    {**ZERO, "over_limit_s": 1},
    {**USAGE, "distance_m": -1},
    {**USAGE, "samples": 1.5},
    {**USAGE, "distance_m": 10**9 + 1},
    {k: v for k, v in USAGE.items() if k != "samples"},
    {**USAGE, "speed": 3},
    "usage",
])
def test_bad_aggregates(aggregates: Any) -> None:
    with pytest.raises(InputError) as exc:
        premium(PRODUCT, aggregates)
    assert code_of(exc) == "bad_aggregates"


def test_claim_errors() -> None:
    for threshold in (-1, 1.5, True, "300", 100_001):
        with pytest.raises(InputError) as exc:
            claim_due(threshold, {"max_delta_v_dkmh": -500})
        assert code_of(exc) == "bad_threshold"
    for bad_summary in ({}, {"max_delta_v_dkmh": 5.0}, {"max_delta_v_dkmh": True}, None):
        with pytest.raises(InputError) as exc:
            claim_due(300, bad_summary)
        assert code_of(exc) == "bad_summary"
    for args in ((1, None, None), (True, -1, None), (True, None, 2.5), (True, 10, True)):
        with pytest.raises(InputError) as exc:
            claim_flags(*args)
        assert code_of(exc) == "bad_claim"
    with pytest.raises(InputError) as exc:
        claim_flags(True, 1, 1, tolerance_m=-1)
    assert code_of(exc) == "bad_claim"


# -- claims ----------------------------------------------------------------------------------


def test_claim_due_strictly_above() -> None:
    assert claim_due(300, {"max_delta_v_dkmh": -301}) is True
    assert claim_due(300, {"max_delta_v_dkmh": -300}) is False
    assert claim_due(300, {"max_delta_v_dkmh": 301}) is True           # a rear impact counts by magnitude
    assert claim_due(0, {"max_delta_v_dkmh": 0}) is False
    device = Signer.deterministic("ubi-test-device")
    hard = summary(sample_record("1HGCM82633A004352", device, 1_700_000_000_000, braking=True, impact_kmh=60, seed=4))
    soft = summary(sample_record("1HGCM82633A004352", device, 1_700_000_000_000, braking=True, impact_kmh=5, seed=4))
    assert claim_due(150, hard) is True and claim_due(150, soft) is False


def test_claim_flags() -> None:
    assert claim_flags(True, 12_345, 12_345_600) == []
    assert claim_flags(False, 12_345, 12_345_600) == ["no_crash_record"]
    assert claim_flags(True, 12_345, 12_345_000 + ODOMETER_TOLERANCE_M) == []
    assert claim_flags(True, 12_345, 12_345_000 + ODOMETER_TOLERANCE_M + 1) == ["odometer_inconsistent"]
    assert claim_flags(True, 12_345, 12_345_000 - ODOMETER_TOLERANCE_M - 1) == ["odometer_inconsistent"]
    assert claim_flags(False, 99_000, 12_000) == ["no_crash_record", "odometer_inconsistent"]
    assert claim_flags(True, None, 12_000) == [] and claim_flags(True, 5, None) == []
    assert claim_flags(True, 10, 15_000, tolerance_m=5_000) == []


# -- properties ------------------------------------------------------------------------------

rates = st.integers(-1_000_000, 1_000_000)
cents = st.integers(0, 10**12)


@st.composite
def products(draw: st.DrawFn, *, non_negative: bool = False) -> dict[str, Any]:
    rate = st.integers(0, 1_000_000) if non_negative else rates
    low = draw(st.one_of(st.just(0), cents))
    product = {
        "base_cents": draw(cents), "per_km_cents": draw(rate), "per_hard_braking_cents": draw(rate),
        "per_over_limit_minute_cents": draw(rate), "per_night_km_cents": draw(rate),
        "adjustment_bp": draw(st.integers(-10_000, 10_000)), "min_premium_cents": low,
    }
    if draw(st.booleans()):
        product["max_premium_cents"] = draw(st.integers(low, 10**12))
    return product


@st.composite
def usages(draw: st.DrawFn) -> dict[str, int]:
    distance = draw(st.integers(0, 10**9))
    return {"distance_m": distance, "hard_braking": draw(st.integers(0, 10**9)),
            "over_limit_s": draw(st.integers(0, 10**9)), "night_distance_m": draw(st.integers(0, distance)),
            "samples": draw(st.integers(1, 10**9))}


def walk_no_floats(value: Any) -> None:
    assert not isinstance(value, float)
    if isinstance(value, dict):
        for item in value.values():
            walk_no_floats(item)
    elif isinstance(value, list):
        for item in value:
            walk_no_floats(item)


@FAST
@given(product=products(), usage=usages())
def test_terms_sum_to_total_and_caps_hold(product: dict[str, Any], usage: dict[str, int]) -> None:
    result = premium(product, usage)
    assert sum(t["cents"] for t in result.terms) == result.total_cents
    assert result.total_cents >= product["min_premium_cents"] >= 0
    if "max_premium_cents" in product:
        assert result.total_cents <= product["max_premium_cents"]
    for term in result.terms:
        if term["unit"] in ("period", "km", "event", "min"):
            assert term["cents"] == term["quantity"] * term["rate_cents"]
    walk_no_floats(result.terms)
    assert type(result.total_cents) is int
    canonical.encode({"terms": result.terms, "total": result.total_cents})     # within ±(2**53-1)


@FAST
@given(product=products(non_negative=True), usage=usages(), field=st.sampled_from(sorted(USAGE)),
       extra=st.integers(1, 10**7))
def test_monotone_in_each_aggregate(product: dict[str, Any], usage: dict[str, int], field: str, extra: int) -> None:
    more = {**usage, field: min(usage[field] + extra, 10**9)}
    if field == "night_distance_m":
        more[field] = min(more[field], usage["distance_m"])              # night is part of the distance
    assert premium(product, more).total_cents >= premium(product, usage).total_cents
