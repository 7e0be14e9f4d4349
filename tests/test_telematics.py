"""Signed telematics batches: encoding, aggregates (against a plain-Python reference), verification,
sample proofs and mismatch proofs. No timings are asserted here (see ``bench_ingest``)."""

from __future__ import annotations

import calendar
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blokauto.crypto import canonical, merkle
from blokauto.crypto.keys import Signer, b64, unb64
from blokauto.errors import BlokError, InputError, VerificationError
from blokauto.vehicledata import telematics as tm
from blokauto.vehicledata.telematics import (
    DOMAIN_TELEMATICS,
    MAX_SAMPLES,
    SAMPLE_SIZE,
    Aggregates,
    Sample,
    TelematicsHeader,
)

DEVICE = Signer.deterministic("test/telematics/device")
OTHER_DEVICE = Signer.deterministic("test/telematics/other-device")
VIN = "1HGCM82633A004352"
# 2024-01-15 20:59:00 UTC: with utc_offset_min=60, t_s=0 is local 21:59:00, t_s=60 local 22:00:00.
EVENING_MS = calendar.timegm((2024, 1, 15, 20, 59, 0)) * 1000
# 2024-01-16 04:59:58 UTC: with utc_offset_min=60, t_s=0 is local 05:59:58, t_s=2 local 06:00:00.
MORNING_MS = calendar.timegm((2024, 1, 16, 4, 59, 58)) * 1000
NOON_MS = calendar.timegm((2024, 1, 16, 11, 0, 0)) * 1000


def sample(t_s: int, odometer_m: int = 1000, *, speed_cms: int = 1000, accel_mms2: int = 0, brake: int = 0,
           limit_kmh: int = 50, lat_e6: int = 48_137_000, lon_e6: int = 11_575_000,
           utc_offset_min: int = 60) -> Sample:
    return Sample(t_s=t_s, speed_cms=speed_cms, accel_mms2=accel_mms2, brake=brake, odometer_m=odometer_m,
                  limit_kmh=limit_kmh, lat_e6=lat_e6, lon_e6=lon_e6, utc_offset_min=utc_offset_min)


def drive(n: int, **fields: Any) -> list[Sample]:
    """n samples, one per second, 10 m apart."""
    return [sample(t, 1000 + 10 * t, **fields) for t in range(n)]


def unpack_all(blob: bytes) -> list[Sample]:
    """Lenient decoding for the reference: no range or order checks."""
    return [Sample._make(v) for v in struct.iter_unpack(tm.SAMPLE_FORMAT, blob)]


def reference_aggregates(samples: list[Sample], start_ms: int) -> dict[str, int]:
    """The documented rules, one sample at a time, written without numpy."""

    def night(s: Sample) -> bool:
        time_of_day = (start_ms + 1000 * s.t_s + 60_000 * s.utc_offset_min) % 86_400_000
        return time_of_day >= 22 * 3_600_000 or time_of_day < 6 * 3_600_000

    hard = [s.accel_mms2 < -2942 for s in samples]
    return {
        "distance_m": samples[-1].odometer_m - samples[0].odometer_m,
        "hard_braking": sum(1 for i, h in enumerate(hard) if h and (i == 0 or not hard[i - 1])),
        "over_limit_s": sum(1 for s in samples if s.limit_kmh > 0 and s.speed_cms * 36 > s.limit_kmh * 1000),
        "night_distance_m": sum(b.odometer_m - a.odometer_m for a, b in pairwise(samples) if night(b)),
        "max_speed_cms": max(s.speed_cms for s in samples),
        "odometer_end_m": samples[-1].odometer_m,
        "samples": len(samples),
    }


def resign(header: TelematicsHeader, signer: Signer = DEVICE, **changes: Any) -> TelematicsHeader:
    """A header the device really signed, with whatever lies ``changes`` hold."""
    aggregate_changes = {k: changes.pop(k) for k in list(changes) if k in tm.AGGREGATE_NAMES}
    if aggregate_changes:
        changes["aggregates"] = msgspec.structs.replace(header.aggregates, **aggregate_changes)
    unsigned = msgspec.structs.replace(header, device=signer.did, **changes)
    return msgspec.structs.replace(unsigned, signature=b64(signer.sign(DOMAIN_TELEMATICS, tm.header_bytes(unsigned))))


def leaves_of(proof: dict[str, Any]) -> list[int]:
    return [p["index"] // 16 for p in proof["samples"]]


def reference_leaves(blob: bytes) -> list[bytes]:
    """The documented leaves, without the module: merkle.leaf_hash of each 16 consecutive samples."""
    step = 16 * SAMPLE_SIZE
    return [merkle.leaf_hash(blob[i:i + step]) for i in range(0, len(blob), step)]


def header_over(blob: bytes, start_ms: int = NOON_MS, **changes: Any) -> TelematicsHeader:
    """A signed header over any blob, even one seal_batch would refuse (the device misbehaving)."""
    leaves = reference_leaves(blob)
    aggregates = Aggregates(**reference_aggregates(unpack_all(blob), start_ms))
    base = TelematicsHeader(vin=VIN, device=DEVICE.did, seq=1, start_ms=start_ms, count=len(blob) // SAMPLE_SIZE,
                            root=merkle.compute_root(leaves).hex(), aggregates=aggregates, signature="")
    return resign(base, **changes)


@contextmanager
def raises_code(kind: type[BlokError], code: str) -> Iterator[Any]:
    """pytest.raises that also pins the stable error code (clients match on codes, not messages)."""
    with pytest.raises(kind) as info:
        yield info
    assert info.value.code == code, f"{info.value.code}: {info.value.message}"


# --------------------------------------------------------------------------------------------- encoding


def test_sample_layout_is_pinned() -> None:
    s = Sample(t_s=1, speed_cms=2, accel_mms2=-3, brake=1, odometer_m=5, limit_kmh=6, lat_e6=-7, lon_e6=8,
               utc_offset_min=-60)
    raw = tm.encode_sample(s)
    assert raw.hex() == "00000001" "0002" "fffffffd" "01" "00000005" "06" "fffffff9" "00000008" "ffc4"
    assert len(raw) == SAMPLE_SIZE == tm.SAMPLE_DTYPE.itemsize
    assert tm.decode_sample(raw) == s


def test_sample_list_round_trip() -> None:
    samples = [*drive(5), sample(9, 2000, speed_cms=65535, accel_mms2=-(2**31), lat_e6=-90_000_000,
                                 lon_e6=180_000_000, utc_offset_min=840, limit_kmh=255, brake=1)]
    blob = tm.encode_samples(samples)
    assert len(blob) == 6 * SAMPLE_SIZE
    assert tm.decode_samples(blob) == samples


@pytest.mark.parametrize("data", [b"", b"\x00" * 25, b"\x00" * 27])
def test_decode_sample_wrong_length(data: bytes) -> None:
    with raises_code(InputError, "bad_length"):
        tm.decode_sample(data)


@pytest.mark.parametrize("changes", [
    {"brake": 2}, {"lat_e6": 90_000_001}, {"lat_e6": -90_000_001}, {"lon_e6": 180_000_001},
    {"utc_offset_min": 841}, {"utc_offset_min": -735}, {"utc_offset_min": 61},
    {"speed_cms": 65_536}, {"speed_cms": -1}, {"t_s": 2**32}, {"odometer_m": -1}, {"limit_kmh": 256},
    {"accel_mms2": 2**31}, {"speed_cms": 10.0}, {"brake": True},
])
def test_bad_sample_fields_refused(changes: dict[str, Any]) -> None:
    bad = sample(0)._replace(**changes)
    with raises_code(InputError, "bad_sample"):
        tm.encode_sample(bad)
    with raises_code(InputError, "bad_sample"):
        tm.encode_samples([sample(0), bad])


@pytest.mark.parametrize("changes", [{"brake": 2}, {"lat_e6": 90_000_001}, {"utc_offset_min": 7}])
def test_decoding_refuses_out_of_range_fields(changes: dict[str, Any]) -> None:
    raw = struct.pack(tm.SAMPLE_FORMAT, *sample(0)._replace(**changes))
    with raises_code(InputError, "bad_sample"):
        tm.decode_sample(raw)
    with raises_code(InputError, "bad_sample"):
        tm.decode_samples(tm.encode_sample(sample(0)) + raw)


def test_blob_lengths_refused() -> None:
    with raises_code(InputError, "empty_batch"):
        tm.decode_samples(b"")
    with raises_code(InputError, "empty_batch"):
        tm.encode_samples([])
    with raises_code(InputError, "bad_length"):
        tm.decode_samples(b"\x00" * (SAMPLE_SIZE + 1))
    with raises_code(InputError, "batch_too_large"):
        tm.decode_samples(tm.encode_sample(sample(0)) * (MAX_SAMPLES + 1))
    with raises_code(InputError, "batch_too_large"):
        tm.encode_samples([sample(0)] * (MAX_SAMPLES + 1))
    with raises_code(InputError, "bad_encoding"):
        tm.decode_samples("not bytes")  # type: ignore[arg-type]


def test_leaf_hashes_match_merkle_leaf_hash() -> None:
    # Samples ending in zero bytes (utc_offset_min 0) must not lose them on the way through numpy.
    samples = [sample(t, t, utc_offset_min=0, lon_e6=0, lat_e6=0) for t in range(5)] + drive(30)
    blob = tm.encode_samples(samples)
    expected = [merkle.leaf_hash(b"".join(tm.encode_sample(s) for s in samples[i:i + 16]))
                for i in range(0, len(samples), 16)]
    assert tm.leaf_hashes(blob) == expected == reference_leaves(blob) and len(expected) == 3


# --------------------------------------------------------------------------------------------- aggregates


def test_distance_speed_and_unknown_limit() -> None:
    samples = [
        sample(0, 5000, speed_cms=1389, limit_kmh=50),   # 50.004 km/h > 50: over
        sample(1, 5014, speed_cms=1388, limit_kmh=50),   # 49.968 km/h: not over
        sample(2, 5028, speed_cms=4000, limit_kmh=0),    # limit unknown: never over
        sample(3, 5100, speed_cms=3612, limit_kmh=130),  # 130.032 km/h > 130: over
        sample(4, 5110, speed_cms=3611, limit_kmh=130),  # 129.996 km/h: not over
        sample(5, 5120, speed_cms=1250, limit_kmh=45),   # exactly 45 km/h: not over
    ]
    agg = tm.compute_aggregates(tm.encode_samples(samples), NOON_MS)
    assert agg == Aggregates(distance_m=120, hard_braking=0, over_limit_s=2, night_distance_m=0,
                             max_speed_cms=4000, odometer_end_m=5120, samples=6)


def test_sustained_braking_counts_once() -> None:
    accels = [0, -3000, -5000, -2943, 0, -2942, -2943, -9000, 100, -2943]
    samples = [sample(t, 100 + t, accel_mms2=a, brake=int(a < 0)) for t, a in enumerate(accels)]
    agg = tm.compute_aggregates(tm.encode_samples(samples), NOON_MS)
    # Episodes start at t=1 (sustained to t=3), t=6 (-2942 at t=5 is not stronger than 0.3 g), t=9.
    assert agg.hard_braking == 3
    first_is_hard = [sample(0, 1, accel_mms2=-4000), sample(1, 2, accel_mms2=-4000), sample(2, 3)]
    assert tm.compute_aggregates(tm.encode_samples(first_is_hard), NOON_MS).hard_braking == 1


def test_night_boundary_in_the_evening() -> None:
    # Local 21:59:00, 21:59:59, 22:00:00, 22:00:01: the step into 22:00:00 is the first night step.
    samples = [sample(0, 0), sample(59, 100), sample(60, 103), sample(61, 110)]
    assert [tm.is_night(EVENING_MS, s) for s in samples] == [False, False, True, True]
    agg = tm.compute_aggregates(tm.encode_samples(samples), EVENING_MS)
    assert (agg.distance_m, agg.night_distance_m) == (110, 3 + 7)
    # The same instants in UTC (offset 0) are 20:59..21:00: no night at all.
    utc = [s._replace(utc_offset_min=0) for s in samples]
    assert tm.compute_aggregates(tm.encode_samples(utc), EVENING_MS).night_distance_m == 0


def test_night_boundary_in_the_morning_and_offset_change() -> None:
    # Local 05:59:58, 05:59:59 (night), 06:00:00 (day); then the car crosses into UTC+0: 05:00:01 is night.
    samples = [sample(0, 0), sample(1, 5), sample(2, 11), sample(3, 18, utc_offset_min=0)]
    assert [tm.is_night(MORNING_MS, s) for s in samples] == [True, True, False, True]
    agg = tm.compute_aggregates(tm.encode_samples(samples), MORNING_MS)
    assert agg.night_distance_m == 5 + 7
    # Milliseconds in start_ms count: half a second later, 06:00:00.500 at t_s=2 is still day.
    assert tm.is_night(MORNING_MS + 500, samples[1]) and not tm.is_night(MORNING_MS + 500, samples[2])


_sample_fields = st.tuples(
    st.integers(1, 3600),                                                     # gap to the next t_s
    st.integers(0, 60),                                                       # odometer step
    st.one_of(st.integers(0, 5000), st.integers(0, 65535)),                   # speed_cms
    st.one_of(st.sampled_from([-2943, -2942, 0]), st.integers(-20_000, 20_000),
              st.integers(-(2**31), 2**31 - 1)),                              # accel_mms2
    st.integers(0, 1),                                                        # brake
    st.one_of(st.sampled_from([0, 30, 50, 130]), st.integers(0, 255)),        # limit_kmh
    st.integers(-90_000_000, 90_000_000),
    st.integers(-180_000_000, 180_000_000),
    st.integers(-48, 56),                                                     # utc offset in 15 min
)


@st.composite
def sample_lists(draw: st.DrawFn, max_size: int = 40) -> list[Sample]:
    """Valid batches: strictly increasing t_s, non-decreasing odometer, every field in range."""
    rows = draw(st.lists(_sample_fields, min_size=1, max_size=max_size))
    t = draw(st.integers(0, 1000))
    odometer = draw(st.integers(0, 2**32 - 1 - 60 * max_size))
    result = []
    for gap, step, speed, accel, brake, limit, lat, lon, offset in rows:
        result.append(Sample(t, speed, accel, brake, odometer, limit, lat, lon, 15 * offset))
        t += gap
        odometer += step
    return result


start_times = st.one_of(st.integers(0, canonical.MAX_SAFE_INTEGER),
                        st.integers(EVENING_MS - 86_400_000, EVENING_MS + 86_400_000))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=sample_lists(), start_ms=start_times)
def test_numpy_aggregates_equal_reference(samples: list[Sample], start_ms: int) -> None:
    blob = tm.encode_samples(samples)
    assert tm.decode_samples(blob) == samples
    assert msgspec.structs.asdict(tm.compute_aggregates(blob, start_ms)) == reference_aggregates(samples, start_ms)


# --------------------------------------------------------------------------------------------- header, build, verify


def test_build_and_verify_honest_batch() -> None:
    samples = drive(7)
    header, blob = tm.build_batch(DEVICE, VIN, 3, NOON_MS, samples)
    assert blob == tm.encode_samples(samples)
    assert header.device == DEVICE.did and header.count == 7 and header.seq == 3
    assert header.root == merkle.compute_root([merkle.leaf_hash(blob)]).hex()     # 7 samples: one leaf
    assert msgspec.structs.asdict(header.aggregates) == reference_aggregates(samples, NOON_MS)
    tm.verify_batch(header)
    tm.verify_batch(header, blob)


def test_header_dict_round_trip_is_json() -> None:
    header, _ = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(3))
    data = tm.header_to_dict(header)
    assert msgspec.json.decode(msgspec.json.encode(data)) == data
    assert canonical.decode(canonical.encode(data)) == data
    assert tm.header_from_dict(data) == header
    assert set(data) == {"vin", "device", "seq", "start_ms", "count", "root", "aggregates", "signature"}


@pytest.mark.parametrize(("change", "code"), [
    (lambda d: d.update(extra=1), "bad_header"),
    (lambda d: d.pop("seq"), "bad_header"),
    (lambda d: d.update(seq=True), "bad_header"),
    (lambda d: d.update(seq=1.0), "bad_header"),
    (lambda d: d.update(seq=-1), "bad_header"),
    (lambda d: d.update(start_ms=2**53), "bad_header"),
    (lambda d: d.update(count=0), "bad_header"),
    (lambda d: d.update(count=MAX_SAMPLES + 1), "bad_header"),
    (lambda d: d.update(root=d["root"].upper()), "bad_header"),
    (lambda d: d.update(root=d["root"][:-2]), "bad_header"),
    (lambda d: d["aggregates"].update(distance_m=-1), "bad_header"),
    (lambda d: d["aggregates"].update(bonus=1), "bad_header"),
    (lambda d: d.update(vin="1HGCM82633A00435"), "bad_vin"),
    (lambda d: d.update(device="did:key:zNotAKey"), "bad_did"),
    (lambda d: d.update(signature=d["signature"][:-4]), "bad_encoding"),
    (lambda d: d.update(signature=" " + d["signature"]), "bad_encoding"),
])
def test_header_from_dict_is_strict(change: Any, code: str) -> None:
    header, _ = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(3))
    data = tm.header_to_dict(header)
    change(data)
    with raises_code(InputError, code):
        tm.header_from_dict(data)


def test_bad_signature() -> None:
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(3))
    for forged in (msgspec.structs.replace(header, seq=1),
                   msgspec.structs.replace(header, device=OTHER_DEVICE.did),
                   msgspec.structs.replace(header, aggregates=msgspec.structs.replace(header.aggregates,
                                                                                     max_speed_cms=0)),
                   msgspec.structs.replace(header, signature=resign(header, OTHER_DEVICE).signature)):
        with raises_code(VerificationError, "bad_signature"):
            tm.verify_batch(forged)
        with raises_code(VerificationError, "bad_signature"):
            tm.verify_batch(forged, blob)


def test_verify_error_codes() -> None:
    samples = drive(5)
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, samples)
    other_blob = tm.encode_samples(drive(5, speed_cms=999))
    with raises_code(VerificationError, "root_mismatch"):
        tm.verify_batch(header, other_blob)
    with raises_code(VerificationError, "count_mismatch"):
        tm.verify_batch(resign(header, count=4, samples=4), blob)
    with raises_code(VerificationError, "aggregates_mismatch"):
        tm.verify_batch(resign(header, samples=4))  # count and aggregates.samples disagree: no blob needed
    duplicate = tm.encode_samples([sample(0, 0), sample(1, 1), sample(1, 2)])
    with raises_code(VerificationError, "samples_out_of_order"):
        tm.verify_batch(header_over(duplicate), duplicate)
    backwards_t = tm.encode_samples([sample(5, 0), sample(3, 1)])
    with raises_code(VerificationError, "samples_out_of_order"):
        tm.verify_batch(header_over(backwards_t), backwards_t)
    backwards_odo = tm.encode_samples([sample(0, 10), sample(1, 9)])
    with raises_code(VerificationError, "odometer_backwards"):
        tm.verify_batch(header_over(backwards_odo), backwards_odo)
    bad_field = tm.encode_sample(sample(0)) + struct.pack(tm.SAMPLE_FORMAT, *sample(1)._replace(brake=3))
    with raises_code(InputError, "bad_sample"):
        tm.verify_batch(header_over(bad_field), bad_field)
    with raises_code(InputError, "empty_batch"):
        tm.verify_batch(header, b"")
    with raises_code(InputError, "bad_length"):
        tm.verify_batch(header, blob[:-1])
    with raises_code(InputError, "batch_too_large"):
        tm.verify_batch(header, blob[:SAMPLE_SIZE] * (MAX_SAMPLES + 1))
    with raises_code(InputError, "bad_header"):
        tm.verify_batch(tm.header_to_dict(header))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", tm.AGGREGATE_NAMES[:-1])
def test_aggregates_mismatch_names_the_aggregate(name: str) -> None:
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(4, speed_cms=2000, limit_kmh=30))
    lie = resign(header, **{name: getattr(header.aggregates, name) + 1})
    tm.verify_batch(lie)  # the signature alone is fine: the lie shows only against the samples
    with raises_code(VerificationError, "aggregates_mismatch") as info:
        tm.verify_batch(lie, blob)
    assert name in info.value.message


def test_build_refuses_bad_input() -> None:
    with raises_code(InputError, "samples_out_of_order"):
        tm.build_batch(DEVICE, VIN, 0, NOON_MS, [sample(0, 0), sample(0, 1)])
    with raises_code(InputError, "odometer_backwards"):
        tm.build_batch(DEVICE, VIN, 0, NOON_MS, [sample(0, 5), sample(1, 4)])
    with raises_code(InputError, "empty_batch"):
        tm.build_batch(DEVICE, VIN, 0, NOON_MS, [])
    with raises_code(InputError, "bad_vin"):
        tm.build_batch(DEVICE, "not a vin", 0, NOON_MS, drive(2))
    with raises_code(InputError, "bad_header"):
        tm.build_batch(DEVICE, VIN, -1, NOON_MS, drive(2))
    with raises_code(InputError, "bad_header"):
        tm.build_batch(DEVICE, VIN, 0, 2**53, drive(2))


def test_tampering_any_blob_byte_is_detected() -> None:
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(5, accel_mms2=-3000))
    for position in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[position] ^= bit
            with pytest.raises(BlokError):
                tm.verify_batch(header, bytes(tampered))


def test_tampering_any_header_byte_is_detected() -> None:
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(5))
    wire = msgspec.json.encode(tm.header_to_dict(header))
    for position in range(len(wire)):
        tampered = bytearray(wire)
        tampered[position] ^= 0x01
        with pytest.raises((BlokError, msgspec.DecodeError, UnicodeDecodeError)):
            tm.verify_batch(tm.header_from_dict(msgspec.json.decode(bytes(tampered))), blob)


def test_verify_batches_parallel() -> None:
    items = [tm.build_batch(DEVICE, VIN, seq, NOON_MS, drive(6)) for seq in range(3)]
    big = [(tm.seal_batch(DEVICE, VIN, 10 + i, NOON_MS, tm._synthetic_blob(i, 9000)), tm._synthetic_blob(i, 9000))
           for i in range(4)]
    lie = (resign(items[1][0], over_limit_s=99), items[1][1])
    batch = [*items, lie, *big, (items[0][0], tm.encode_samples(drive(6, speed_cms=5)))]
    expected_codes = [None, None, None, "aggregates_mismatch", None, None, None, None, "root_mismatch"]
    serial = tm.verify_batches_parallel(batch, workers=1)
    assert [r and r[0] for r in serial] == expected_codes
    assert tm.verify_batches_parallel(batch, workers=2) == serial
    assert tm.verify_batches_parallel([], workers=2) == []


# --------------------------------------------------------------------------------------------- sample proofs


def test_sample_proofs_for_every_index() -> None:
    samples = drive(71)  # 5 leaves, the last one short: a node is carried up without a sibling
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, samples)
    proofs = tm.prove_samples(blob, range(71))
    for i, proof in enumerate(proofs):
        assert proof == tm.prove_sample(blob, i)
        assert set(proof) == {"index", "leaf", "path"}
        assert len(unb64(proof["leaf"])) == (16 if i < 64 else 7) * SAMPLE_SIZE
        assert tm.verify_sample(header, proof) == samples[i]
        assert tm.verify_sample(header, proof, check_signature=False) == samples[i]


def test_single_sample_batch_proof() -> None:
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(1))
    proof = tm.prove_sample(blob, 0)
    assert proof["path"] == []
    assert tm.verify_sample(header, proof) == drive(1)[0]


def test_altered_sample_proofs_fail() -> None:
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(40))
    proof = tm.prove_sample(blob, 2)
    other_header, other_blob = tm.build_batch(DEVICE, VIN, 1, NOON_MS, drive(40, speed_cms=1))

    def altered(**changes: Any) -> dict[str, Any]:
        return {**proof, **changes}

    changed = tm.encode_samples(drive(40, speed_cms=7)[:16])
    with raises_code(VerificationError, "inclusion_failed"):
        tm.verify_sample(header, altered(leaf=b64(changed)))
    # a leaf proves each of its 16 samples; naming a sample of another leaf does not verify
    assert tm.verify_sample(header, altered(index=3)) == drive(40)[3]
    with raises_code(VerificationError, "inclusion_failed"):
        tm.verify_sample(header, altered(index=16))
    with raises_code(VerificationError, "inclusion_failed"):
        tm.verify_sample(header, altered(path=[b64(bytes(32)), *proof["path"][1:]]))
    with raises_code(VerificationError, "inclusion_failed"):
        tm.verify_sample(header, altered(path=proof["path"][:-1]))
    with raises_code(VerificationError, "inclusion_failed"):
        tm.verify_sample(other_header, proof)
    with raises_code(InputError, "bad_proof"):
        tm.verify_sample(header, altered(index=40))
    with raises_code(InputError, "bad_proof"):
        tm.verify_sample(header, altered(index=True))
    with raises_code(InputError, "bad_proof"):
        tm.verify_sample(header, altered(extra=1))
    with raises_code(InputError, "bad_proof"):
        tm.verify_sample(header, altered(path="abc"))
    with raises_code(InputError, "bad_proof"):
        tm.verify_sample(header, altered(leaf=123))
    with raises_code(InputError, "bad_encoding"):
        tm.verify_sample(header, altered(leaf=proof["leaf"][:-4]))
    with raises_code(VerificationError, "bad_signature"):
        tm.verify_sample(msgspec.structs.replace(header, seq=9), proof)
    with raises_code(InputError, "bad_proof"):
        tm.prove_sample(blob, 40)
    assert tm.verify_sample(other_header, tm.prove_sample(other_blob, 2)).speed_cms == 1


# --------------------------------------------------------------------------------------------- mismatch proofs


def mixed_drive(n: int = 64) -> list[Sample]:
    """An evening drive: some over-limit samples, braking episodes, night from t=60 (local 22:00)."""
    result = []
    for t in range(n):
        result.append(sample(t, 1000 + 12 * t, speed_cms=1200 + (300 if t % 9 == 0 else 0) + t,
                             accel_mms2=-4000 if t % 10 in (3, 4) else 100, limit_kmh=50))
    return result


@pytest.fixture()
def honest() -> tuple[TelematicsHeader, bytes]:
    return tm.build_batch(DEVICE, VIN, 0, EVENING_MS, mixed_drive())


def test_honest_header_has_no_mismatch(honest: tuple[TelematicsHeader, bytes]) -> None:
    header, blob = honest
    assert tm.prove_mismatch(header, blob) is None


@pytest.mark.parametrize(("lie", "claim", "proofs"), [
    ({"distance_m": +1}, "distance_m", 2),
    ({"distance_m": -1}, "distance_m", 2),
    ({"max_speed_cms": -1}, "max_speed_cms", 1),
    ({"odometer_end_m": +1}, "odometer_end_m", 1),
    ({"odometer_end_m": -1}, "odometer_end_m", 1),
    ({"max_speed_cms": +1}, "max_speed_cms", None),
    ({"over_limit_s": -2}, "over_limit_s", None),  # 7 proofs cost more than the 64-sample blob
    ({"over_limit_s": +1}, "over_limit_s", None),
    ({"hard_braking": +1}, "hard_braking", None),
    ({"night_distance_m": +1}, "night_distance_m", None),
    ({"night_distance_m": "zero"}, "night_distance_m", 1),
])
def test_mismatch_proofs(honest: tuple[TelematicsHeader, bytes], lie: dict[str, Any], claim: str,
                         proofs: int | None) -> None:
    header, blob = honest
    name, delta = next(iter(lie.items()))
    value = 0 if delta == "zero" else getattr(header.aggregates, name) + delta
    lies: dict[str, Any] = {name: value}
    liar = resign(header, **lies)
    proof = tm.prove_mismatch(liar, blob)
    assert proof is not None and proof["claim"] == claim
    if proofs is None:
        assert set(proof) == {"claim", "blob"}
    else:
        assert len(proof["samples"]) == proofs
    assert tm.verify_mismatch(liar, proof) == claim
    with raises_code(VerificationError, "not_disproved"):
        tm.verify_mismatch(header, proof)  # the honest header survives the same evidence


def test_understated_counts_with_sample_proofs() -> None:
    # 128 quiet samples with a few events: proofs beat the 3.3 kB blob.
    samples = [sample(t, 10 * t, speed_cms=1000, limit_kmh=50) for t in range(128)]
    for t in (20, 70, 100):
        samples[t] = samples[t]._replace(speed_cms=2000)            # over 50 km/h
    for t in (30, 31, 32, 90):
        samples[t] = samples[t]._replace(accel_mms2=-5000)          # two episodes, the first sustained
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, samples)
    assert (header.aggregates.over_limit_s, header.aggregates.hard_braking) == (3, 2)

    over = tm.prove_mismatch(resign(header, over_limit_s=1), blob)
    assert over is not None and leaves_of(over) == [1, 4]       # one proof per 16-sample leaf
    assert tm.verify_mismatch(resign(header, over_limit_s=1), over) == "over_limit_s"

    braking = tm.prove_mismatch(resign(header, hard_braking=1), blob)
    assert braking is not None and leaves_of(braking) == [1, 5]
    assert tm.verify_mismatch(resign(header, hard_braking=1), braking) == "hard_braking"
    # The sustained episode's second sample does not count as a new start.
    sustained = {"claim": "hard_braking", "samples": tm.prove_samples(blob, [30])}     # leaf 1: samples 16-31
    with raises_code(VerificationError, "not_disproved"):
        tm.verify_mismatch(resign(header, hard_braking=1), sustained)
    # A hard sample proven without its predecessor (32 opens leaf 2; 31 is in leaf 1) shows no episode start.
    with raises_code(VerificationError, "not_disproved"):
        tm.verify_mismatch(resign(header, hard_braking=1),
                           {"claim": "hard_braking", "samples": tm.prove_samples(blob, [32, 90])})


def test_night_distance_proof_picks_largest_steps() -> None:
    samples = [sample(t, 0) for t in range(100)]
    odometer = 0
    for t in range(100):
        odometer += 50 if t in (70, 80) else 1
        samples[t] = samples[t]._replace(odometer_m=odometer)
    header, blob = tm.build_batch(DEVICE, VIN, 0, EVENING_MS, samples)  # night from t=60
    liar = resign(header, night_distance_m=90)
    proof = tm.prove_mismatch(liar, blob)
    assert proof is not None and leaves_of(proof) == [4, 5]
    assert tm.verify_mismatch(liar, proof) == "night_distance_m"


def test_smallest_evidence_is_chosen(honest: tuple[TelematicsHeader, bytes]) -> None:
    header, blob = honest
    both = resign(header, distance_m=1, max_speed_cms=1)
    proof = tm.prove_mismatch(both, blob)
    assert proof is not None and proof["claim"] == "max_speed_cms" and len(proof["samples"]) == 1


def test_structure_mismatch_proofs() -> None:
    duplicate = tm.encode_samples([sample(t, t) for t in range(40)] + [sample(39, 41)])
    header = header_over(duplicate)
    proof = tm.prove_mismatch(header, duplicate)
    assert proof is not None and proof["claim"] == "samples_out_of_order"
    assert leaves_of(proof) == [2]          # samples 39 and 40 share a leaf
    assert tm.verify_mismatch(header, proof) == "samples_out_of_order"

    backwards = tm.encode_samples([sample(t, 100 - (t == 20)) for t in range(40)])
    header = header_over(backwards)
    proof = tm.prove_mismatch(header, backwards)
    assert proof is not None and proof["claim"] == "odometer_backwards"
    assert tm.verify_mismatch(header, proof) == "odometer_backwards"

    raws = [tm.encode_sample(sample(t, t)) for t in range(40)]
    raws[7] = struct.pack(tm.SAMPLE_FORMAT, *sample(7, 7)._replace(utc_offset_min=1))
    bad = b"".join(raws)
    header = header_over(bad)
    proof = tm.prove_mismatch(header, bad)
    assert proof is not None and proof["claim"] == "bad_sample" and proof["samples"][0]["index"] == 7
    assert tm.verify_mismatch(header, proof) == "bad_sample"
    with raises_code(InputError, "bad_sample"):
        tm.verify_sample(header, proof["samples"][0])


def test_count_and_samples_claims() -> None:
    header, blob = tm.build_batch(DEVICE, VIN, 0, NOON_MS, drive(5))
    inconsistent = resign(header, samples=4)
    assert tm.prove_mismatch(inconsistent, blob) == {"claim": "samples"}
    assert tm.verify_mismatch(inconsistent, {"claim": "samples"}) == "samples"
    with raises_code(VerificationError, "not_disproved"):
        tm.verify_mismatch(header, {"claim": "samples"})

    miscounted = resign(header, count=6, samples=6)
    proof = tm.prove_mismatch(miscounted, blob)
    assert proof == {"claim": "count", "blob": b64(blob)}
    assert tm.verify_mismatch(miscounted, proof) == "count"
    with raises_code(VerificationError, "not_disproved"):
        tm.verify_mismatch(header, proof)


def test_mismatch_proof_errors(honest: tuple[TelematicsHeader, bytes]) -> None:
    header, blob = honest
    liar = resign(header, max_speed_cms=1)
    proof = tm.prove_mismatch(liar, blob)
    assert proof is not None
    with raises_code(VerificationError, "root_mismatch"):
        tm.prove_mismatch(liar, tm.encode_samples(drive(64)))
    with raises_code(VerificationError, "root_mismatch"):
        tm.verify_mismatch(liar, {"claim": "max_speed_cms", "blob": b64(tm.encode_samples(drive(64)))})
    with raises_code(VerificationError, "bad_signature"):
        tm.verify_mismatch(msgspec.structs.replace(liar, seq=5), proof)
    with raises_code(VerificationError, "bad_signature"):
        tm.prove_mismatch(msgspec.structs.replace(liar, seq=5), blob)
    with raises_code(VerificationError, "not_disproved"):
        tm.verify_mismatch(liar, {**proof, "claim": "over_limit_s"})  # right samples, wrong claim
    with raises_code(VerificationError, "not_disproved"):
        tm.verify_mismatch(liar, {"claim": "distance_m", "samples": tm.prove_samples(blob, [0])})
    with raises_code(VerificationError, "inclusion_failed"):
        leaf = bytearray(unb64(proof["samples"][0]["leaf"]))
        leaf[4:6] = (9999).to_bytes(2, "big")           # the first sample's speed
        tampered = {**proof["samples"][0], "leaf": b64(bytes(leaf))}
        tm.verify_mismatch(liar, {"claim": "max_speed_cms", "samples": [tampered]})
    for malformed in ({"claim": "speeding"}, {"claim": "max_speed_cms"}, {"claim": "max_speed_cms", "samples": []},
                      {"claim": "max_speed_cms", "samples": proof["samples"] * 2},
                      {"claim": "count", "samples": proof["samples"]}, {"claim": "samples", "blob": b64(blob)},
                      {**proof, "extra": 1}, ["max_speed_cms"]):
        with raises_code(InputError, "bad_proof"):
            tm.verify_mismatch(liar, malformed)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=sample_lists(max_size=30), start_ms=start_times, data=st.data())
def test_every_lie_is_provable(samples: list[Sample], start_ms: int, data: st.DataObject) -> None:
    header, blob = tm.build_batch(DEVICE, VIN, 0, start_ms, samples)
    assert tm.prove_mismatch(header, blob) is None
    name = data.draw(st.sampled_from(tm.AGGREGATE_NAMES[:-1]))
    truth = getattr(header.aggregates, name)
    upper = 65535 if name == "max_speed_cms" else 2**32 - 1 if name.endswith("_m") else MAX_SAMPLES
    lie = data.draw(st.integers(0, upper).filter(lambda v: v != truth))
    lies: dict[str, Any] = {name: lie}
    liar = resign(header, **lies)
    proof = tm.prove_mismatch(liar, blob)
    assert proof is not None
    assert tm.verify_mismatch(liar, proof) == name
    with raises_code(VerificationError, "not_disproved"):
        tm.verify_mismatch(header, proof)
