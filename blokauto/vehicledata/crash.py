"""Crash (event data recorder) records: the 49 CFR Part 563 data elements, signed by the vehicle.

At a crash the vehicle's device key signs the full record; the ledger keeps only its SHA-256 and a
:func:`summary` (what an insurer, a court or a buyer needs, nothing that places the car), while the
record itself stays off the ledger. :func:`verify_deposit` later proves that a record someone
produces is byte for byte the one the device signed and that the public summary was derived from it.

Units (integers only: one record has one canonical byte form, so one hash):

* speeds and delta-V in **0.1 km/h** (``_dkmh``; Part 563 asks for 1 km/h resolution). Delta-V is
  signed as recorded: a frontal crash, where the car loses speed, gives negative values;
* times in **milliseconds** (``_ms``); pre-crash samples are relative to time zero, oldest first;
* accelerator pedal and engine throttle in **whole percent of full travel** (0-100, as Part 563);
* the service brake, belt, warning lamp and "complete file" are booleans (on / buckled / lit / yes).

Delta-V is sampled at 100 Hz from 0 to 250 ms (26 values, ``DELTA_V_SAMPLES``). The pre-crash
profile is either Part 563 as issued (``"5s_2hz"``: -5.0 s to 0 s, 11 samples) or as amended by
NHTSA in 2024 (``"20s_10hz"``: -20.0 s to 0 s, 201 samples).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from blokauto.contracts.registry import Payload
from blokauto.crypto import canonical
from blokauto.crypto.keys import Signer, public_key_from_did, unb64, verify_signature
from blokauto.errors import InputError, VerificationError
from blokauto.vin import parse_vin

DOMAIN_CRASH = b"blokauto/crash/v1\n"
RECORD_VERSION: Literal[1] = 1

DELTA_V_PERIOD_MS = 10                 # 100 Hz
DELTA_V_SAMPLES = 26                   # 0, 10, ... 250 ms
MAX_DELTA_V_WINDOW_MS = 300            # Part 563: maximum delta-V is sought from 0 to 300 ms
MAX_DELTA_V_DKMH = 2_500               # ±250 km/h: beyond Part 563's ±100 km/h range, never refused as data
MAX_SPEED_DKMH = 3_000                 # 300 km/h
MAX_DEPLOY_MS = 250                    # Part 563 air bag deployment time range
MAX_EVENT_GAP_MS = 5_000               # Part 563: events more than 5 s apart are separate records
MAX_IGNITION_CYCLES = 2**32 - 1
BRAKE_WINDOW_MS = 2_000                # default "brake applied in the last N ms" window of the summary
MAX_SAMPLES = 256                      # schema bound (exact counts are checked per profile)

Profile = Literal["5s_2hz", "20s_10hz"]
# profile -> (duration before time zero in ms, sample period in ms, number of samples)
PROFILES: dict[str, tuple[int, int, int]] = {
    "5s_2hz": (5_000, 500, 11),        # 49 CFR 563 Table I (2006)
    "20s_10hz": (20_000, 100, 201),    # NHTSA final rule 2024 (extended pre-crash recording)
}

Vin = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]     # checked in full by validate()
Did = Annotated[str, msgspec.Meta(min_length=10, max_length=64, pattern=r"^did:key:z[1-9A-HJ-NP-Za-km-z]+$")]
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
DeltaV = Annotated[int, msgspec.Meta(ge=-MAX_DELTA_V_DKMH, le=MAX_DELTA_V_DKMH)]
Speed = Annotated[int, msgspec.Meta(ge=0, le=MAX_SPEED_DKMH)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
DeployMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_DEPLOY_MS)]
Cycles = Annotated[int, msgspec.Meta(ge=0, le=MAX_IGNITION_CYCLES)]
_MaxSamples = msgspec.Meta(max_length=MAX_SAMPLES)
DeltaVSeries = Annotated[list[DeltaV], _MaxSamples]
SpeedSeries = Annotated[list[Speed], _MaxSamples]
PercentSeries = Annotated[list[Percent], _MaxSamples]
FlagSeries = Annotated[list[bool], _MaxSamples]


class CrashRecord(Payload, kw_only=True):
    """One EDR event as the device signs it (Part 563 Table I; field units in the module doc)."""

    version: Literal[1]
    vin: Vin
    device: Did                                    # the vehicle's device key (did:key) that signs
    event_ms: TimeMs                               # time zero of the event, Unix ms (device clock)
    profile: Profile
    # crash pulse: 0..250 ms at 100 Hz, and the extreme over 0..300 ms with its time
    delta_v_dkmh: DeltaVSeries
    max_delta_v_dkmh: DeltaV                       # the value of largest magnitude, signed
    time_max_delta_v_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_DELTA_V_WINDOW_MS)]
    # pre-crash, oldest first, the last sample at time zero
    speed_dkmh: SpeedSeries
    accelerator_pct: PercentSeries
    service_brake: FlagSeries
    throttle_pct: PercentSeries | None = None   # engine throttle, where recorded
    ignition_cycles_crash: Cycles
    ignition_cycles_download: Cycles | None = None  # absent when the device deposits at the crash
    driver_belt_buckled: bool
    airbag_warning_lamp: bool                      # frontal air bag warning lamp lit
    driver_airbag_deploy_ms: DeployMs | None = None     # first stage; absent: not deployed
    passenger_airbag_deploy_ms: DeployMs | None = None
    event_count: Annotated[int, msgspec.Meta(ge=1, le=2)]
    time_between_events_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_EVENT_GAP_MS)] | None = None
    complete_file: bool

    def validate(self) -> None:
        parse_vin(self.vin)
        public_key_from_did(self.device)          # canonical did:key of an Ed25519 key (bad_did)
        if len(self.delta_v_dkmh) != DELTA_V_SAMPLES:
            raise InputError(f"delta-V needs {DELTA_V_SAMPLES} samples (0-250 ms at 100 Hz), "
                             f"got {len(self.delta_v_dkmh)}", code="bad_sample_count")
        _, period, count = PROFILES[self.profile]
        for name in ("speed_dkmh", "accelerator_pct", "service_brake", "throttle_pct"):
            series = getattr(self, name)
            if series is not None and len(series) != count:
                raise InputError(f"{name} needs {count} samples for profile {self.profile} "
                                 f"(one per {period} ms), got {len(series)}", code="bad_sample_count")
        peak = max(abs(v) for v in self.delta_v_dkmh)
        if abs(self.max_delta_v_dkmh) < peak:
            raise InputError(f"maximum delta-V {self.max_delta_v_dkmh} is smaller in magnitude than a "
                             f"recorded sample ({peak})", code="bad_max_delta_v")
        if (self.event_count == 2) != (self.time_between_events_ms is not None):
            raise InputError("time_between_events_ms is given exactly when event_count is 2", code="bad_multi_event")
        if self.ignition_cycles_download is not None and self.ignition_cycles_download < self.ignition_cycles_crash:
            raise InputError("ignition cycles at download precede those at the crash", code="bad_ignition_cycles")


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A record as deposited: canonical bytes (kept off-ledger), their hash, the device signature
    and the summary that goes on the ledger."""

    record: bytes
    record_hash: str
    signature: bytes
    device: str
    summary: dict[str, Any]


# -- encoding --------------------------------------------------------------------------------


def parse_record(value: Any) -> CrashRecord:
    """A record from a decoded JSON object; schema errors are ``bad_record``."""
    try:
        record = msgspec.convert(value, CrashRecord, strict=True)
    except msgspec.ValidationError as exc:
        raise InputError(f"crash record: {exc}", code="bad_record") from None
    record.validate()
    return record


def encode_record(record: CrashRecord) -> bytes:
    """The one canonical byte form (RFC 8785 subset) that is hashed and signed; validates first so
    a device can never sign a record the ledger would refuse."""
    record.validate()
    return canonical.encode(msgspec.to_builtins(record))


def decode_record(data: bytes) -> CrashRecord:
    """Parse canonical bytes; a byte form other than :func:`encode_record`'s (a null field left
    out, say) is refused with ``non_canonical`` so a record has exactly one hash."""
    record = parse_record(canonical.decode(data))
    if encode_record(record) != data:
        raise InputError("crash record is not in canonical form (every field must be present)",
                         code="non_canonical")
    return record


def record_hash(data: bytes) -> str:
    """Hex SHA-256 of the canonical record bytes: what the ledger stores."""
    return hashlib.sha256(data).hexdigest()


def sign_record(signer: Signer, record: CrashRecord) -> SignedRecord:
    """The device signs the canonical bytes under ``DOMAIN_CRASH`` (never replayable as a tx)."""
    if signer.did != record.device:
        raise InputError("the record names another device than the signer", code="device_mismatch")
    data = encode_record(record)
    return SignedRecord(record=data, record_hash=record_hash(data), signature=signer.sign(DOMAIN_CRASH, data),
                        device=signer.did, summary=summary(record))


# -- the ledger's view -----------------------------------------------------------------------


def sample_time_ms(profile: str, index: int) -> int:
    """Time (ms, <= 0) of pre-crash sample ``index`` in ``profile``."""
    duration, period, _ = PROFILES[profile]
    return -duration + index * period


def summary(record: CrashRecord, *, brake_window_ms: int = BRAKE_WINDOW_MS) -> dict[str, Any]:
    """What goes on the ledger: severity, speed, braking, restraint and deployment facts.

    No location and no full curves. ``brake_applied`` is true when the service brake was on in any
    pre-crash sample at or after ``-brake_window_ms`` (the window is part of the summary).
    """
    duration, period, count = PROFILES[record.profile]
    if type(brake_window_ms) is not int or not 0 <= brake_window_ms <= duration:
        raise InputError(f"brake window must be 0..{duration} ms for profile {record.profile}", code="bad_window")
    first = count - 1 - brake_window_ms // period     # oldest sample inside the window
    return {
        "version": record.version,
        "profile": record.profile,
        "event_ms": record.event_ms,
        "max_delta_v_dkmh": record.max_delta_v_dkmh,
        "time_max_delta_v_ms": record.time_max_delta_v_ms,
        "speed_at_minus_500ms_dkmh": record.speed_dkmh[count - 1 - 500 // period],
        "speed_at_0ms_dkmh": record.speed_dkmh[-1],
        "brake_window_ms": brake_window_ms,
        "brake_applied": any(record.service_brake[first:]),
        "driver_belt_buckled": record.driver_belt_buckled,
        "airbag_warning_lamp": record.airbag_warning_lamp,
        "driver_airbag_deployed": record.driver_airbag_deploy_ms is not None,
        "passenger_airbag_deployed": record.passenger_airbag_deploy_ms is not None,
        "event_count": record.event_count,
        "complete_file": record.complete_file,
    }


def verify_deposit(
    record_bytes: bytes, signature: bytes | str, device_did: str, deposited_hash: str,
    deposited_summary: Any, *, brake_window_ms: int = BRAKE_WINDOW_MS,
) -> CrashRecord:
    """Prove that ``record_bytes`` is what ``device_did`` signed and what the ledger deposited.

    Raises :class:`VerificationError` with ``record_hash_mismatch`` (the bytes are not the deposited
    ones), ``bad_signature`` (the device did not sign them), ``device_mismatch`` (the record names
    another device) or ``summary_mismatch`` (the ledger's summary was not derived from the record).
    Bytes that hash and verify but do not parse raise the decoder's :class:`InputError`.
    Returns the parsed record.
    """
    if not isinstance(record_bytes, bytes) or record_hash(record_bytes) != deposited_hash:
        raise VerificationError("crash record does not match the deposited hash", code="record_hash_mismatch")
    if isinstance(signature, str):
        try:
            signature = unb64(signature, size=64, what="signature")
        except InputError:
            raise VerificationError("crash record signature is not valid base64", code="bad_signature") from None
    if not isinstance(signature, bytes) or not verify_signature(device_did, DOMAIN_CRASH, record_bytes, signature):
        raise VerificationError("crash record is not signed by the device", code="bad_signature")
    record = decode_record(record_bytes)
    if record.device != device_did:
        raise VerificationError("crash record names another device than its signer", code="device_mismatch")
    expected = canonical.encode(summary(record, brake_window_ms=brake_window_ms))
    try:
        deposited = canonical.encode(deposited_summary)
    except InputError:
        deposited = b""
    if deposited != expected:     # compared as canonical bytes: true and 1 are different here
        raise VerificationError("deposited summary was not derived from the record", code="summary_mismatch")
    return record


# -- demo data -------------------------------------------------------------------------------


def sample_record(
    vin: str, device: str | Signer, event_ms: int, *, braking: bool, impact_kmh: int, seed: int,
    profile: Profile = "5s_2hz",
) -> CrashRecord:
    """A plausible record for demos and tests, deterministic from its arguments (integers only).

    Braking: the driver cruises, lifts off the accelerator ~0.3 s before braking 0.8-3.0 s before
    impact, then decelerates at 5.6-8.3 m/s² down to ``impact_kmh`` at time zero. Not braking: a
    gentle acceleration into the impact. The crash pulse is a smooth S-curve (3s² - 2s³) reaching
    70-110 % of the impact speed in 70-150 ms, then a small rebound; air bags fire above 20 km/h.
    """
    if type(impact_kmh) is not int or not 0 <= impact_kmh <= 200:
        raise InputError("impact speed must be 0..200 km/h", code="bad_record")
    if profile not in PROFILES:
        raise InputError(f"unknown pre-crash profile {profile!r}", code="bad_record")
    did = device if isinstance(device, str) else device.did
    rng = random.Random(seed)
    count = PROFILES[profile][2]
    impact = impact_kmh * 10

    onset = rng.randrange(800, 3_001, 100) if braking else None     # ms before time zero
    decel = rng.randint(200, 300)                                  # 0.1 km/h per second
    slope = rng.randint(0, 20)                                     # gentle acceleration, 0.1 km/h per s
    cruise = min(MAX_SPEED_DKMH, impact + decel * onset // 1_000) if onset is not None else impact
    pedal = rng.randint(12, 35)
    speed: list[int] = []
    accelerator: list[int] = []
    brake: list[bool] = []
    for index in range(count):
        before = -sample_time_ms(profile, index)                   # ms before time zero
        if onset is not None and before <= onset:
            speed.append(min(MAX_SPEED_DKMH, impact + decel * before // 1_000))
            accelerator.append(0)
            brake.append(True)
            continue
        pedal = max(5, min(60, pedal + rng.randint(-3, 3)))
        if onset is not None:
            speed.append(max(0, min(MAX_SPEED_DKMH, cruise + rng.randint(-5, 5))))
            accelerator.append(0 if before <= onset + 300 else pedal)
        else:
            speed.append(impact if before == 0 else max(0, impact - slope * before // 1_000 + rng.randint(-3, 3)))
            accelerator.append(pedal)
        brake.append(False)
    throttle = [accelerator[max(0, i - 1)] for i in range(count)] if rng.randint(0, 1) else None

    total = impact * rng.randint(70, 110) // 100                   # |delta-V| at the end of the pulse
    pulse = rng.randint(70, 150)                                   # ms
    rebound = rng.randint(0, 8)                                    # % given back by 300 ms

    def magnitude(t: int) -> int:
        if t < pulse:
            return total * (3 * t * t * pulse - 2 * t * t * t) // pulse**3
        return total - total * rebound * (t - pulse) // (100 * (MAX_DELTA_V_WINDOW_MS - pulse))

    delta_v = [-magnitude(i * DELTA_V_PERIOD_MS) for i in range(DELTA_V_SAMPLES)]
    deploy = total >= 200
    driver_ms = rng.randint(8, 40) if deploy else None
    passenger_ms = driver_ms + rng.randint(0, 5) if driver_ms is not None and rng.randint(1, 10) <= 7 else None
    second = rng.randint(1, 100) <= 15
    cycles = rng.randint(50, 30_000)
    record = CrashRecord(
        version=RECORD_VERSION, vin=vin, device=did, event_ms=event_ms, profile=profile,
        delta_v_dkmh=delta_v, max_delta_v_dkmh=-total, time_max_delta_v_ms=pulse,
        speed_dkmh=speed, accelerator_pct=accelerator, service_brake=brake, throttle_pct=throttle,
        ignition_cycles_crash=cycles, ignition_cycles_download=cycles + rng.randint(0, 2),
        driver_belt_buckled=rng.randint(1, 100) <= 92, airbag_warning_lamp=rng.randint(1, 100) <= 3,
        driver_airbag_deploy_ms=driver_ms, passenger_airbag_deploy_ms=passenger_ms,
        event_count=2 if second else 1,
        time_between_events_ms=rng.randrange(100, MAX_EVENT_GAP_MS + 1, 100) if second else None,
        complete_file=True,
    )
    record.validate()
    return record
