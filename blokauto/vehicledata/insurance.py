"""Usage-based insurance: a product's premium from a period's telematics aggregates, and claim triggers.

Everything is integer arithmetic (cents, metres, seconds, basis points), so every node and the
insurer's own back office compute the same premium to the cent, and the explanation adds up.

Rounding, chosen once and used everywhere:

* distances are billed in whole **kilometres**, ``km = (metres + 500) // 1000`` (half-up), and
  over-limit time in whole **minutes**, ``min = (seconds + 30) // 60`` (half-up); a usage term is
  then exactly ``quantity * rate_cents``, so anyone can check it by hand. Night kilometres are a
  surcharge on top of (not instead of) the distance charge;
* the discount/surcharge in basis points applies to the subtotal (base + usage) and is rounded
  half-up towards +infinity: ``(subtotal * bp + 5000) // 10000``;
* then the caps: a maximum above, a minimum below (0 unless set, so a premium is never negative);
  a cap that bites is its own term, so the terms always sum exactly to the total.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, cast

import msgspec

from blokauto.contracts.registry import Payload
from blokauto.errors import InputError

MAX_CENTS = 10**12                  # 10 billion in currency units: far above any premium
MAX_RATE_CENTS = 1_000_000          # per unit (km, event, minute)
MAX_DISTANCE_M = 10**9              # per period: a million km
MAX_COUNT = 10**9
ODOMETER_TOLERANCE_M = 2_000        # a cluster shows whole km (up to 999 m behind) + ~1 km driven in between

Cents = Annotated[int, msgspec.Meta(ge=0, le=MAX_CENTS)]
Rate = Annotated[int, msgspec.Meta(ge=-MAX_RATE_CENTS, le=MAX_RATE_CENTS)]
BasisPoints = Annotated[int, msgspec.Meta(ge=-10_000, le=10_000)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Metres = Annotated[int, msgspec.Meta(ge=0, le=MAX_DISTANCE_M)]


class Product(Payload, kw_only=True):
    """An insurer's usage-based product: a base premium per period plus integer weights.

    Weights may be negative (a credit per unit) but a premium never falls below ``min_premium_cents``
    (0 by default). ``adjustment_bp`` is a discount (< 0) or surcharge (> 0) in basis points.
    """

    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "EUR"    # ISO 4217
    base_cents: Cents
    per_km_cents: Rate = 0
    per_hard_braking_cents: Rate = 0
    per_over_limit_minute_cents: Rate = 0
    per_night_km_cents: Rate = 0
    adjustment_bp: BasisPoints = 0
    min_premium_cents: Cents = 0
    max_premium_cents: Cents | None = None

    def validate(self) -> None:
        if self.max_premium_cents is not None and self.max_premium_cents < self.min_premium_cents:
            raise InputError("max_premium_cents is below min_premium_cents", code="bad_product")


class Aggregates(Payload, kw_only=True):
    """One period's telematics totals for one vehicle (``samples``: data points behind them)."""

    distance_m: Metres
    hard_braking: Count
    over_limit_s: Count
    night_distance_m: Metres
    samples: Count

    def validate(self) -> None:
        if self.night_distance_m > self.distance_m:
            raise InputError("night distance exceeds the total distance", code="bad_aggregates")
        if self.samples == 0 and (self.distance_m or self.hard_braking or self.over_limit_s):
            raise InputError("usage without any telematics sample", code="bad_aggregates")


class Premium(msgspec.Struct, frozen=True, kw_only=True):
    """A period's premium and its explanation; ``sum(t["cents"] for t in terms) == total_cents``."""

    currency: str
    total_cents: int
    terms: list[dict[str, Any]]


def _convert(value: Any, kind: type[Any], code: str) -> Any:
    if isinstance(value, kind):
        value.validate()
        return value
    if not isinstance(value, Mapping):
        raise InputError(f"{kind.__name__.lower()} must be an object", code=code)
    try:
        converted = msgspec.convert(dict(value), kind, strict=True)
    except msgspec.ValidationError as exc:
        raise InputError(f"{kind.__name__.lower()}: {exc}", code=code) from None
    converted.validate()
    return converted


def parse_product(value: Any) -> Product:
    """A product from a JSON object (or a :class:`Product`); any fault is ``bad_product``."""
    return cast(Product, _convert(value, Product, "bad_product"))


def parse_aggregates(value: Any) -> Aggregates:
    """Aggregates from a JSON object (or :class:`Aggregates`); any fault is ``bad_aggregates``."""
    return cast(Aggregates, _convert(value, Aggregates, "bad_aggregates"))


def half_up_div(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half-up (towards +infinity on a tie); denominator > 0."""
    return (2 * numerator + denominator) // (2 * denominator)


def money(cents: int, currency: str) -> str:
    """``-1234`` -> ``"-12.34 EUR"`` (for explanation texts only)."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d} {currency}"


def _term(term: str, quantity: int, unit: str, rate_cents: int, cents: int, text: str) -> dict[str, Any]:
    return {"term": term, "quantity": quantity, "unit": unit, "rate_cents": rate_cents, "cents": cents, "text": text}


def premium(product: Product | Mapping[str, Any], aggregates: Aggregates | Mapping[str, Any]) -> Premium:
    """The premium for one period with one explanation term per charge (rounding in the module doc).

    Terms, in order: ``base``, ``distance``, ``hard_braking``, ``over_limit``, ``night`` (always
    present), then ``adjustment`` (if ``adjustment_bp`` is not 0), then ``cap_max`` or ``cap_min``
    (only when a cap bites). For the quantity-based terms ``cents == quantity * rate_cents``; for
    ``adjustment`` the quantity is the basis points and ``rate_cents`` the subtotal they apply to; a
    cap's quantity is the cap itself and its ``rate_cents`` the amount before it.
    """
    p = parse_product(product)
    a = parse_aggregates(aggregates)
    cur = p.currency
    km = half_up_div(a.distance_m, 1_000)
    night_km = half_up_div(a.night_distance_m, 1_000)
    minutes = half_up_div(a.over_limit_s, 60)
    terms = [_term("base", 1, "period", p.base_cents, p.base_cents,
                   f"base premium for the period: {money(p.base_cents, cur)}")]
    for name, quantity, unit, rate, what in (
        ("distance", km, "km", p.per_km_cents, f"{a.distance_m} m driven"),
        ("hard_braking", a.hard_braking, "event", p.per_hard_braking_cents, "hard-braking events"),
        ("over_limit", minutes, "min", p.per_over_limit_minute_cents, f"{a.over_limit_s} s over the speed limit"),
        ("night", night_km, "km", p.per_night_km_cents, f"{a.night_distance_m} m driven at night"),
    ):
        cents = quantity * rate
        terms.append(_term(name, quantity, unit, rate, cents,
                           f"{what}: {quantity} {unit} x {rate} cents = {money(cents, cur)}"))
    subtotal = sum(t["cents"] for t in terms)
    total = subtotal
    if p.adjustment_bp:
        cents = half_up_div(subtotal * p.adjustment_bp, 10_000)
        kind = "discount" if p.adjustment_bp < 0 else "surcharge"
        terms.append(_term("adjustment", p.adjustment_bp, "bp", subtotal, cents,
                           f"{kind} of {p.adjustment_bp} bp on {money(subtotal, cur)} = {money(cents, cur)}"))
        total += cents
    if p.max_premium_cents is not None and total > p.max_premium_cents:
        terms.append(_term("cap_max", p.max_premium_cents, "cents", total, p.max_premium_cents - total,
                           f"capped at the maximum premium of {money(p.max_premium_cents, cur)}"))
        total = p.max_premium_cents
    elif total < p.min_premium_cents:
        terms.append(_term("cap_min", p.min_premium_cents, "cents", total, p.min_premium_cents - total,
                           f"raised to the minimum premium of {money(p.min_premium_cents, cur)}"))
        total = p.min_premium_cents
    return Premium(currency=cur, total_cents=total, terms=terms)


# -- claims ----------------------------------------------------------------------------------


def claim_due(policy_threshold_dv: int, crash_summary: Mapping[str, Any]) -> bool:
    """True when the crash's maximum delta-V is strictly above the policy threshold.

    Both in 0.1 km/h (the crash module's unit); the comparison uses the magnitude, since a frontal
    crash records a negative delta-V.
    """
    if type(policy_threshold_dv) is not int or not 0 <= policy_threshold_dv <= 100_000:
        raise InputError("claim threshold must be a non-negative integer in 0.1 km/h", code="bad_threshold")
    dv = crash_summary.get("max_delta_v_dkmh") if isinstance(crash_summary, Mapping) else None
    if type(dv) is not int:
        raise InputError("crash summary has no integer max_delta_v_dkmh", code="bad_summary")
    return abs(dv) > policy_threshold_dv


def claim_flags(
    crash_record_present: bool, odometer_km_at_crash: int | None, telematics_odometer_m_near_crash: int | None,
    *, tolerance_m: int = ODOMETER_TOLERANCE_M,
) -> list[str]:
    """Reasons a claim needs a human look, in a fixed order.

    ``no_crash_record``: no signed EDR record was deposited. ``odometer_inconsistent``: the cluster
    odometer at the crash (whole km) and the telematics odometer near it (m) differ by more than
    ``tolerance_m`` (default 2 km: the cluster shows whole km, up to 999 m behind, and the telematics
    reading may be up to a kilometre away from the crash). A missing reading is not checked.
    """
    if type(crash_record_present) is not bool:
        raise InputError("crash_record_present must be a boolean", code="bad_claim")
    for value in (odometer_km_at_crash, telematics_odometer_m_near_crash):
        if value is not None and (type(value) is not int or value < 0):
            raise InputError("odometer readings must be non-negative integers", code="bad_claim")
    if type(tolerance_m) is not int or tolerance_m < 0:
        raise InputError("tolerance must be a non-negative integer of metres", code="bad_claim")
    flags = []
    if not crash_record_present:
        flags.append("no_crash_record")
    if (odometer_km_at_crash is not None and telematics_odometer_m_near_crash is not None
            and abs(odometer_km_at_crash * 1_000 - telematics_odometer_m_near_crash) > tolerance_m):
        flags.append("odometer_inconsistent")
    return flags
