"""Crash (EDR) records: schema, canonical bytes, device signatures, the ledger summary and deposits."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blokauto.crypto import canonical
from blokauto.crypto.keys import DOMAIN_TX, Signer, b64
from blokauto.errors import InputError, VerificationError
from blokauto.vehicledata import crash
from blokauto.vehicledata.crash import (
    DOMAIN_CRASH,
    CrashRecord,
    decode_record,
    encode_record,
    parse_record,
    record_hash,
    sample_record,
    sign_record,
    summary,
    verify_deposit,
)

VIN = "1HGCM82633A004352"
T0 = 1_700_000_000_000
DEVICE = Signer.deterministic("edr-test-device")
OTHER = Signer.deterministic("edr-other-device")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(**kwargs: Any) -> CrashRecord:
    args: dict[str, Any] = {"braking": True, "impact_kmh": 48, "seed": 1}
    args.update(kwargs)
    return sample_record(VIN, DEVICE, T0, **args)


def as_dict(record: CrashRecord) -> dict[str, Any]:
    return msgspec.to_builtins(record)


def changed(record: CrashRecord, **fields: Any) -> dict[str, Any]:
    value = as_dict(record)
    value.update(fields)
    return value


def code_of(exc_info: pytest.ExceptionInfo[Any]) -> str:
    return exc_info.value.code


BASE = make()
SIGNED = sign_record(DEVICE, BASE)


def deposit(signed: crash.SignedRecord = SIGNED, **overrides: Any) -> CrashRecord:
    args = {"record_bytes": signed.record, "signature": signed.signature, "device_did": signed.device,
            "deposited_hash": signed.record_hash, "deposited_summary": signed.summary}
    args.update(overrides)
    return verify_deposit(**args)


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["5s_2hz", "20s_10hz"])
@pytest.mark.parametrize("braking", [True, False])
def test_round_trip(profile: str, braking: bool) -> None:
    record = make(profile=profile, braking=braking, seed=7)
    data = encode_record(record)
    assert decode_record(data) == record
    assert parse_record(canonical.decode(data)) == record
    signed = sign_record(DEVICE, record)
    assert signed.record == data
    assert signed.record_hash == record_hash(data) and len(signed.record_hash) == 64
    assert signed.device == DEVICE.did
    assert signed.summary == summary(record)
    assert deposit(signed) == record
    # the signature is also accepted in the base64 form an API carries
    assert deposit(signed, signature=b64(signed.signature)) == record


def test_record_counts_per_profile() -> None:
    short, long = make(profile="5s_2hz"), make(profile="20s_10hz")
    assert len(short.delta_v_dkmh) == len(long.delta_v_dkmh) == 26
    assert len(short.speed_dkmh) == len(short.accelerator_pct) == len(short.service_brake) == 11
    assert len(long.speed_dkmh) == len(long.accelerator_pct) == len(long.service_brake) == 201
    assert crash.sample_time_ms("5s_2hz", 0) == -5_000 and crash.sample_time_ms("5s_2hz", 10) == 0
    assert crash.sample_time_ms("20s_10hz", 0) == -20_000 and crash.sample_time_ms("20s_10hz", 195) == -500


def test_summary_fields_and_no_location() -> None:
    record = make(braking=True, impact_kmh=48, seed=3)
    s = summary(record)
    assert s["max_delta_v_dkmh"] == record.max_delta_v_dkmh < 0
    assert s["time_max_delta_v_ms"] == record.time_max_delta_v_ms
    assert s["speed_at_0ms_dkmh"] == record.speed_dkmh[-1] == 480
    assert s["speed_at_minus_500ms_dkmh"] == record.speed_dkmh[9]
    assert s["event_ms"] == T0 and s["event_count"] == record.event_count
    assert s["driver_airbag_deployed"] is (record.driver_airbag_deploy_ms is not None)
    assert s["passenger_airbag_deployed"] is (record.passenger_airbag_deploy_ms is not None)
    assert s["driver_belt_buckled"] is record.driver_belt_buckled
    assert not {"vin", "device", "lat", "lon", "location", "speed_dkmh", "delta_v_dkmh"} & set(s)
    canonical.encode(s)   # ledger-ready: integers, booleans, strings only


def test_sample_is_deterministic_and_plausible() -> None:
    assert encode_record(make(seed=5)) == encode_record(make(seed=5))
    assert encode_record(make(seed=5)) != encode_record(make(seed=6))
    for seed in range(30):
        for profile in ("5s_2hz", "20s_10hz"):
            braking = make(seed=seed, profile=profile, braking=True, impact_kmh=60)
            assert braking.speed_dkmh[-1] == 600 and braking.service_brake[-1]
            on = [v for v, b in zip(braking.speed_dkmh, braking.service_brake, strict=True) if b]
            assert on == sorted(on, reverse=True) and on[0] > on[-1]       # decelerating while braking
            assert all(a == 0 for a, b in zip(braking.accelerator_pct, braking.service_brake, strict=True) if b)
            coasting = make(seed=seed, profile=profile, braking=False, impact_kmh=30)
            assert not any(coasting.service_brake) and coasting.speed_dkmh[-1] == 300
            for record in (braking, coasting):
                curve = [-v for v in record.delta_v_dkmh]
                assert curve[0] == 0 and max(curve) <= -record.max_delta_v_dkmh
                assert 70 <= record.time_max_delta_v_ms <= 150
    slow = make(impact_kmh=8, seed=2)
    assert slow.driver_airbag_deploy_ms is None and slow.passenger_airbag_deploy_ms is None
    assert make(impact_kmh=0, braking=False).max_delta_v_dkmh == 0


# -- schema errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("vin"),
    lambda d: d.update(version=2),
    lambda d: d.update(profile="30s_5hz"),
    lambda d: d.update(extra=1),
    lambda d: d.update(driver_belt_buckled=1),
    lambda d: d.update(service_brake=[1] * 11),
    lambda d: d.update(event_ms=-1),
    lambda d: d.update(speed_dkmh=[3_001] * 11),
    lambda d: d.update(accelerator_pct=[101] * 11),
    lambda d: d.update(delta_v_dkmh=[2_501] * 26),
    lambda d: d.update(time_max_delta_v_ms=301),
    lambda d: d.update(driver_airbag_deploy_ms=251),
    lambda d: d.update(event_count=3),
    lambda d: d.update(time_between_events_ms=5_001, event_count=2),
    lambda d: d.update(max_delta_v_dkmh=1.5),
    lambda d: d.update(device="did:web:example.com"),
    lambda d: d.update(speed_dkmh=[0] * 300),
])
def test_bad_record(mutate: Any) -> None:
    value = as_dict(BASE)
    mutate(value)
    with pytest.raises(InputError) as exc:
        parse_record(value)
    assert code_of(exc) == "bad_record"
    with pytest.raises(InputError):
        parse_record([value])


@pytest.mark.parametrize(("fields", "profile"), [
    ({"delta_v_dkmh": [0] * 25}, "5s_2hz"),
    ({"delta_v_dkmh": [0] * 27}, "5s_2hz"),
    ({"speed_dkmh": [0] * 10}, "5s_2hz"),
    ({"accelerator_pct": [0] * 12}, "5s_2hz"),
    ({"service_brake": [False] * 201}, "5s_2hz"),
    ({"throttle_pct": [0] * 3}, "5s_2hz"),
    ({"profile": "20s_10hz"}, "5s_2hz"),                   # 11 samples under the 201-sample profile
    ({"profile": "5s_2hz"}, "20s_10hz"),
])
def test_bad_sample_count(fields: dict[str, Any], profile: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_record(changed(make(profile=profile), **fields))
    assert code_of(exc) == "bad_sample_count"


def test_semantic_error_codes() -> None:
    peak = max(abs(v) for v in BASE.delta_v_dkmh)
    cases = [
        (changed(BASE, max_delta_v_dkmh=-(peak - 1)), "bad_max_delta_v"),
        (changed(BASE, event_count=2, time_between_events_ms=None), "bad_multi_event"),
        (changed(BASE, event_count=1, time_between_events_ms=800), "bad_multi_event"),
        (changed(BASE, ignition_cycles_crash=100, ignition_cycles_download=99), "bad_ignition_cycles"),
        (changed(BASE, vin="1HGCM82633A004353"), "bad_vin"),
        (changed(BASE, device="did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2Qt"), "bad_did"),
    ]
    for value, code in cases:
        with pytest.raises(InputError) as exc:
            parse_record(value)
        assert code_of(exc) == code, value
    # a positive extreme (a rear impact) of the right magnitude is fine, as is a download count not yet read
    assert parse_record(changed(BASE, max_delta_v_dkmh=peak, ignition_cycles_download=None))


def test_encode_refuses_invalid_record() -> None:
    bad = msgspec.structs.replace(BASE, delta_v_dkmh=[0] * 3)     # structs skip validation on construction
    with pytest.raises(InputError) as exc:
        encode_record(bad)
    assert code_of(exc) == "bad_sample_count"


def test_non_canonical_bytes() -> None:
    record = make(seed=11)
    value = as_dict(record)
    value["time_between_events_ms"] = None
    value["event_count"] = 1
    value.pop("time_between_events_ms")                            # a null field left out
    with pytest.raises(InputError) as exc:
        decode_record(canonical.encode(value))
    assert code_of(exc) == "non_canonical"
    data = encode_record(record)
    with pytest.raises(InputError) as exc:
        decode_record(data.replace(b",", b", ", 1))
    assert code_of(exc) == "non_canonical"
    with pytest.raises(InputError) as exc:
        decode_record(data[:-1])
    assert code_of(exc) == "malformed_json"


def test_sign_requires_the_named_device() -> None:
    with pytest.raises(InputError) as exc:
        sign_record(OTHER, BASE)
    assert code_of(exc) == "device_mismatch"


def test_bad_window_and_bad_sample_arguments() -> None:
    for window in (-1, 5_001, True):
        with pytest.raises(InputError) as exc:
            summary(BASE, brake_window_ms=window)
        assert code_of(exc) == "bad_window"
    assert summary(make(profile="20s_10hz"), brake_window_ms=20_000)["brake_window_ms"] == 20_000
    for bad in ({"impact_kmh": 201}, {"impact_kmh": -1}, {"profile": "1s_1hz"}):
        with pytest.raises(InputError) as exc:
            make(**bad)
        assert code_of(exc) == "bad_record"


# -- deposits --------------------------------------------------------------------------------


def test_verify_error_codes() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"deposited_hash": "0" * 64}, "record_hash_mismatch"),
        ({"deposited_hash": SIGNED.record_hash.upper()}, "record_hash_mismatch"),
        ({"record_bytes": SIGNED.record + b" "}, "record_hash_mismatch"),
        ({"signature": SIGNED.signature[:-1] + bytes([SIGNED.signature[-1] ^ 1])}, "bad_signature"),
        ({"signature": SIGNED.signature[:32]}, "bad_signature"),
        ({"signature": "not base64!"}, "bad_signature"),
        ({"signature": OTHER.sign(DOMAIN_CRASH, SIGNED.record)}, "bad_signature"),
        ({"signature": DEVICE.sign(DOMAIN_TX, SIGNED.record)}, "bad_signature"),      # domain separation
        ({"device_did": OTHER.did}, "bad_signature"),
        ({"deposited_summary": {**SIGNED.summary, "brake_applied": not SIGNED.summary["brake_applied"]}},
         "summary_mismatch"),
        ({"deposited_summary": {**SIGNED.summary, "event_count": True}}, "summary_mismatch"),
        ({"deposited_summary": {**SIGNED.summary, "driver_belt_buckled": int(SIGNED.summary["driver_belt_buckled"])}},
         "summary_mismatch"),
        ({"deposited_summary": {**SIGNED.summary, "speed_at_0ms_dkmh": 481}}, "summary_mismatch"),
        ({"deposited_summary": {**SIGNED.summary, "lat": 52}}, "summary_mismatch"),
        ({"deposited_summary": {**SIGNED.summary, "max_delta_v_dkmh": 1.0}}, "summary_mismatch"),
        ({"deposited_summary": {k: v for k, v in SIGNED.summary.items() if k != "complete_file"}},
         "summary_mismatch"),
        ({"deposited_summary": None}, "summary_mismatch"),
    ]
    for overrides, code in cases:
        with pytest.raises(VerificationError) as exc:
            deposit(**overrides)
        assert code_of(exc) == code, overrides
    # a summary made with another brake window is only accepted when verified with that window
    wide = summary(BASE, brake_window_ms=4_000)
    with pytest.raises(VerificationError) as exc:
        deposit(deposited_summary=wide)
    assert code_of(exc) == "summary_mismatch"
    assert verify_deposit(SIGNED.record, SIGNED.signature, DEVICE.did, SIGNED.record_hash, wide,
                          brake_window_ms=4_000) == BASE


def test_verify_record_naming_another_device() -> None:
    """The device key signed a record that names another device: the signature is valid, the claim is not."""
    data = encode_record(msgspec.structs.replace(BASE, device=OTHER.did))
    sig = DEVICE.sign(DOMAIN_CRASH, data)
    with pytest.raises(VerificationError) as exc:
        verify_deposit(data, sig, DEVICE.did, record_hash(data), SIGNED.summary)
    assert code_of(exc) == "device_mismatch"


def test_verify_signed_garbage_is_input_error() -> None:
    data = b'{"not":"a record"}'
    with pytest.raises(InputError) as exc:
        verify_deposit(data, DEVICE.sign(DOMAIN_CRASH, data), DEVICE.did, record_hash(data), {})
    assert code_of(exc) == "bad_record"


@FAST
@given(data=st.data())
def test_any_flipped_byte_is_detected(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(SIGNED.record) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(SIGNED.record)
    tampered[index] ^= mask
    tampered_bytes = bytes(tampered)
    with pytest.raises(VerificationError) as exc:          # against the deposited hash
        deposit(record_bytes=tampered_bytes)
    assert code_of(exc) == "record_hash_mismatch"
    with pytest.raises(VerificationError) as exc:          # even if the hash on file were swapped too
        deposit(record_bytes=tampered_bytes, deposited_hash=record_hash(tampered_bytes))
    assert code_of(exc) == "bad_signature"


def _mutate(value: Any, draw: st.DrawFn) -> Any:
    """A different JSON value of the same kind (bool, int, str, list or null)."""
    if value is None:
        return draw(st.one_of(st.integers(0, 300), st.booleans(), st.just([])))
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + draw(st.integers(-1000, 1000).filter(bool))
    if isinstance(value, str):
        return draw(st.text(min_size=1, max_size=20).filter(lambda s: s != value))
    assert isinstance(value, list)
    if not value:
        return [0]
    i = draw(st.integers(0, len(value) - 1))
    return [*value[:i], _mutate(value[i], draw), *value[i + 1:]]


@FAST
@given(data=st.data(), seed=st.integers(0, 50), profile=st.sampled_from(["5s_2hz", "20s_10hz"]))
def test_any_changed_field_is_detected(data: st.DataObject, seed: int, profile: str) -> None:
    record = make(seed=seed, profile=profile, braking=seed % 2 == 0)
    signed = sign_record(DEVICE, record)
    field = data.draw(st.sampled_from(sorted(as_dict(record))))
    value = as_dict(record)
    value[field] = _mutate(value[field], data.draw)
    tampered = canonical.encode(value)
    assert tampered != signed.record
    expectations = ((signed.record_hash, "record_hash_mismatch"), (record_hash(tampered), "bad_signature"))
    for deposited_hash, code in expectations:
        with pytest.raises(VerificationError) as exc:
            deposit(signed, record_bytes=tampered, deposited_hash=deposited_hash)
        assert code_of(exc) == code


@FAST
@given(data=st.data(), seed=st.integers(0, 50))
def test_any_changed_summary_is_detected(data: st.DataObject, seed: int) -> None:
    signed = sign_record(DEVICE, make(seed=seed, braking=seed % 3 != 0))
    key = data.draw(st.sampled_from(sorted(signed.summary)))
    forged = {**signed.summary, key: _mutate(signed.summary[key], data.draw)}
    with pytest.raises(VerificationError) as exc:
        deposit(signed, deposited_summary=forged)
    assert code_of(exc) == "summary_mismatch"


# -- the "brakes failed" dispute -------------------------------------------------------------


def test_brakes_failed_dispute() -> None:
    """The driver says they braked and the brakes failed: the ledger's summary must say what the samples say."""
    braked = make(braking=True, impact_kmh=40, seed=21)
    assert braked.service_brake[-1] and summary(braked)["brake_applied"] is True
    signed = sign_record(DEVICE, braked)
    # the insurer cannot deposit "no braking" for a record whose samples show braking
    with pytest.raises(VerificationError) as exc:
        deposit(signed, deposited_summary={**signed.summary, "brake_applied": False})
    assert code_of(exc) == "summary_mismatch"
    assert deposit(signed).service_brake[-1]

    no_brake = make(braking=False, impact_kmh=40, seed=21)
    assert summary(no_brake)["brake_applied"] is False
    # braking that ended 3 s before the crash lies outside the default 2 s window, inside a 3 s one
    early = [False] * 11
    early[4] = True                                        # sample at -3.0 s
    record = parse_record(changed(no_brake, service_brake=early))
    assert summary(record)["brake_applied"] is False
    assert summary(record, brake_window_ms=3_000)["brake_applied"] is True
    assert summary(record, brake_window_ms=2_999)["brake_applied"] is False


@FAST
@given(brakes=st.lists(st.booleans(), min_size=11, max_size=11), window=st.integers(0, 5_000))
def test_brake_applied_matches_samples(brakes: list[bool], window: int) -> None:
    record = parse_record(changed(BASE, service_brake=brakes))
    expected = any(b for i, b in enumerate(brakes) if crash.sample_time_ms("5s_2hz", i) >= -window)
    assert summary(record, brake_window_ms=window)["brake_applied"] is expected


@settings(max_examples=40, deadline=None)
@given(brakes=st.lists(st.booleans(), min_size=201, max_size=201), window=st.integers(0, 20_000))
def test_brake_applied_matches_samples_20s(brakes: list[bool], window: int) -> None:
    record = parse_record(changed(make(profile="20s_10hz"), service_brake=brakes))
    expected = any(b for i, b in enumerate(brakes) if crash.sample_time_ms("20s_10hz", i) >= -window)
    assert summary(record, brake_window_ms=window)["brake_applied"] is expected
