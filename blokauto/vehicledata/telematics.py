"""Signed telematics batches: 1 Hz samples from a vehicle's on-board device, committed by a Merkle root.

The device key (an Ed25519 ``Signer``, identity a did:key) signs a batch *header*: who, which batch,
when, how many samples, the RFC 9162 Merkle root over the samples and integer aggregates an insurer
prices from. The ledger holds only the header; the samples (with positions) stay off chain and are
shown to consenting parties, who can check any one of them against the header with a sample proof,
or prove that the header's aggregates are false with a mismatch proof. Pure and deterministic: no
I/O, no clocks, no floats in anything that feeds an aggregate (the benchmark at the end is the only
code that reads a clock).

Sample encoding (``SAMPLE_FORMAT``, big-endian, 26 bytes, no padding, one byte form per sample):

    offset size type    field            meaning
    0      4    uint32  t_s              seconds since the batch start (``start_ms``)
    4      2    uint16  speed_cms        speed, cm/s (0..655.35 m/s)
    6      4    int32   accel_mms2       longitudinal acceleration, mm/s²; braking is negative
    10     1    uint8   brake            service brake pedal pressed: 0 or 1
    11     4    uint32  odometer_m       odometer, metres
    15     1    uint8   limit_kmh        posted speed limit known to the car, km/h; 0 = unknown
    16     4    int32   lat_e6           latitude, micro-degrees, -90e6..90e6
    20     4    int32   lon_e6           longitude, micro-degrees, -180e6..180e6
    24     2    int16   utc_offset_min   the car's local UTC offset, minutes, -720..840, multiple of 15

A batch blob is the samples concatenated (1..``MAX_SAMPLES``). Leaf i of the RFC 9162 tree is
``merkle.leaf_hash`` of samples 16i..16i+15 concatenated (``LEAF_SAMPLES``; the last leaf may hold
fewer): one SHA-256 over 416 bytes costs about what two over 27 bytes do, so a batch verifies ~8
times faster than with one leaf per sample, and a sample's proof carries its leaf (the sample and up
to 15 neighbours, which a reader allowed to see one sample is allowed to see) and the path. Decoding
is strict: a wrong length or a field outside its range is refused (``bad_length``, ``empty_batch``,
``batch_too_large``, ``bad_sample``).

Local time and night: the device records its UTC offset with every sample (it knows its zone from
the map; a per-sample offset survives crossing a border or a DST change inside a batch), so local
time is derived from the signed header clock, never from the verifier's clock:
``local_ms = start_ms + 1000 * t_s + 60_000 * utc_offset_min``; with ``tod = local_ms mod 86_400_000``
a sample is at night when ``tod >= 22:00`` or ``tod < 06:00`` (22:00:00.000 is night, 06:00:00.000 is not).

Aggregates (all integers; the premium is computed from them, so each rule is exact):

* ``samples``: the number of samples (equals the header's ``count``).
* ``distance_m``: ``odometer_m`` of the last sample minus that of the first.
* ``hard_braking``: braking episodes. A sample is *hard* when ``accel_mms2 < -2942`` (a deceleration
  stronger than 0.3 g = 2942 mm/s²; the brake flag is not used, since regenerative braking decelerates
  without the service brake). An episode starts at every hard sample whose predecessor in the batch is
  not hard (or which is the first sample), so a sustained episode counts once. Adjacency is by position
  in the batch, not by time: a gap in ``t_s`` does not split an episode, and an episode that spans two
  batches counts in both.
* ``over_limit_s``: samples (seconds at 1 Hz) with ``limit_kmh > 0`` and ``speed_cms * 36 > limit_kmh
  * 1000`` (the exact form of speed_kmh > limit; an unknown limit never counts).
* ``night_distance_m``: the sum over consecutive samples (i-1, i) where sample i is at night of
  ``odometer_m[i] - odometer_m[i-1]``.
* ``max_speed_cms``: the largest ``speed_cms``.
* ``odometer_end_m``: ``odometer_m`` of the last sample (what a claim compares with the vehicle's
  odometer at a crash).

A valid batch also has strictly increasing ``t_s`` (``samples_out_of_order``) and a non-decreasing
odometer (``odometer_backwards``).

Mismatch proofs (:func:`prove_mismatch`, :func:`verify_mismatch`) name one false claim and carry the
smallest evidence found: Merkle-proven samples where they suffice, else the whole blob.

* ``distance_m``: the first and the last sample prove the exact value, either way; the last sample
  alone proves ``odometer_end_m``.
* understated ``max_speed_cms``, ``over_limit_s`` (k+1 proven over-limit samples), ``hard_braking``
  (k+1 proven episode starts, each with its non-hard predecessor), ``night_distance_m`` (proven night
  pairs whose distances already add up to more than the claim): sample subsets prove a lower bound.
  The night bound relies on the odometer never going backwards; a batch where it does is itself
  provably false (``odometer_backwards``).
* an *overstated* count, maximum or night distance cannot be refuted by showing some samples (the
  others might hold what is claimed): the evidence is the full sample set, checked against the root.
  The full set is also used whenever it is smaller than the proofs.
* a signed batch that is invalid in itself is refuted by one or two proven samples (``bad_sample``,
  ``samples_out_of_order``, ``odometer_backwards``); a header whose ``count`` differs from the
  number of samples under its root is refuted by the whole blob (``count``); a header whose
  ``count`` and ``aggregates.samples`` disagree needs no evidence (``samples``).

Speed: verifying a batch is one SHA-256 per 16 samples for the leaves plus one per interior node
(hashlib costs ~0.6-0.9 us per call, so calls, not bytes, are what count). Everything else is
vectorised with numpy on a structured dtype. :func:`verify_batches_parallel` spreads batches over processes and
:func:`bench_ingest` measures both.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from typing import Annotated, Any, NamedTuple, TypeVar

import msgspec
import numpy as np

from blokauto.crypto import canonical, merkle
from blokauto.crypto.keys import Signer, b64, public_key_from_did, unb64, verify_signature
from blokauto.errors import BlokError, InputError, VerificationError
from blokauto.vin import parse_vin

try:  # CPython's builtin SHA-256 costs ~30% less per one-block message than OpenSSL 3's EVP path.
    from _sha256 import sha256 as _leaf_sha256  # CPython 3.11
except ImportError:  # pragma: no cover - other interpreters / versions
    try:
        from _sha2 import sha256 as _leaf_sha256  # CPython 3.12+
    except ImportError:
        from hashlib import sha256 as _leaf_sha256

__all__ = [
    "DOMAIN_TELEMATICS",
    "HARD_BRAKING_MMS2",
    "MAX_SAMPLES",
    "SAMPLE_DTYPE",
    "SAMPLE_FORMAT",
    "SAMPLE_SIZE",
    "Aggregates",
    "Sample",
    "TelematicsHeader",
    "bench_ingest",
    "build_batch",
    "compute_aggregates",
    "decode_sample",
    "decode_samples",
    "encode_sample",
    "encode_samples",
    "header_bytes",
    "header_from_dict",
    "header_to_dict",
    "ingest_pool",
    "is_night",
    "leaf_count",
    "leaf_hashes",
    "prove_mismatch",
    "prove_sample",
    "prove_samples",
    "seal_batch",
    "verify_batch",
    "verify_batches_parallel",
    "verify_mismatch",
    "verify_sample",
]

DOMAIN_TELEMATICS = b"blokauto/telematics/v1\n"

SAMPLE_FORMAT = ">IHiBIBiih"
SAMPLE_SIZE = 26
SAMPLE_DTYPE = np.dtype([
    ("t_s", ">u4"), ("speed_cms", ">u2"), ("accel_mms2", ">i4"), ("brake", "u1"), ("odometer_m", ">u4"),
    ("limit_kmh", "u1"), ("lat_e6", ">i4"), ("lon_e6", ">i4"), ("utc_offset_min", ">i2"),
])
_SAMPLE_STRUCT = struct.Struct(SAMPLE_FORMAT)
assert _SAMPLE_STRUCT.size == SAMPLE_DTYPE.itemsize == SAMPLE_SIZE

MAX_SAMPLES = 86_400            # one day at 1 Hz: bounds memory and proof work per batch
HARD_BRAKING_MMS2 = 2942        # 0.3 g (0.3 * 9806.65 mm/s², rounded)
MAX_LAT_E6 = 90_000_000
MAX_LON_E6 = 180_000_000
MIN_UTC_OFFSET_MIN = -720       # UTC-12:00
MAX_UTC_OFFSET_MIN = 840        # UTC+14:00
UTC_OFFSET_STEP_MIN = 15        # every zone in use is a multiple of 15 minutes
DAY_MS = 86_400_000
NIGHT_FROM_MS = 22 * 3_600_000  # local 22:00, inclusive
NIGHT_UNTIL_MS = 6 * 3_600_000  # local 06:00, exclusive
MAX_SAFE_INTEGER = canonical.MAX_SAFE_INTEGER
MAX_PROOF_HASHES = 64
LEAF_SAMPLES = 16               # consecutive samples per Merkle leaf
LEAF_BYTES = LEAF_SAMPLES * SAMPLE_SIZE

_HASH_HEX_PATTERN = "^[0-9a-f]{64}$"


class Sample(NamedTuple):
    """One 1 Hz sample; field order is the encoding order (see the module docstring)."""

    t_s: int
    speed_cms: int
    accel_mms2: int
    brake: int
    odometer_m: int
    limit_kmh: int
    lat_e6: int
    lon_e6: int
    utc_offset_min: int


NonNegative = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]
SampleCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_SAMPLES)]
CountUpToMax = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAMPLES)]
Metres = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]


class Aggregates(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the ledger and the insurer see of a batch; rules in the module docstring."""

    distance_m: Metres
    hard_braking: CountUpToMax
    over_limit_s: CountUpToMax
    night_distance_m: Metres
    max_speed_cms: Annotated[int, msgspec.Meta(ge=0, le=2**16 - 1)]
    odometer_end_m: Metres
    samples: SampleCount


AGGREGATE_NAMES: tuple[str, ...] = Aggregates.__struct_fields__


class TelematicsHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The on-chain part of a batch. ``root`` is hex, ``signature`` base64 (the dict form is the struct)."""

    vin: str
    device: str
    seq: NonNegative
    start_ms: NonNegative
    count: SampleCount
    root: Annotated[str, msgspec.Meta(pattern=_HASH_HEX_PATTERN)]
    aggregates: Aggregates
    signature: str


# ---------------------------------------------------------------------------------------------
# Sample encoding


def _sample_problem(sample: Sample) -> str | None:
    """Why a sample's fields are out of range, or None: the same rules as the vectorised check."""
    if sample.brake not in (0, 1):
        return "brake must be 0 or 1"
    if not -MAX_LAT_E6 <= sample.lat_e6 <= MAX_LAT_E6:
        return "lat_e6 outside -90..90 degrees"
    if not -MAX_LON_E6 <= sample.lon_e6 <= MAX_LON_E6:
        return "lon_e6 outside -180..180 degrees"
    offset = sample.utc_offset_min
    if not MIN_UTC_OFFSET_MIN <= offset <= MAX_UTC_OFFSET_MIN or offset % UTC_OFFSET_STEP_MIN:
        return "utc_offset_min must be a multiple of 15 within -720..840"
    return None


def _pack(sample: Sample) -> bytes:
    if len(sample) != len(Sample._fields) or any(type(value) is not int for value in sample):
        raise InputError("a sample is 9 integers (bools and floats are refused)", code="bad_sample")
    try:
        return _SAMPLE_STRUCT.pack(*sample)
    except struct.error as exc:
        raise InputError(f"sample field out of range: {exc}", code="bad_sample") from None


def encode_sample(sample: Sample) -> bytes:
    """The 26 bytes of one sample; out-of-range fields raise ``bad_sample``."""
    data = _pack(sample)
    problem = _sample_problem(Sample._make(sample))
    if problem:
        raise InputError(problem, code="bad_sample")
    return data


def decode_sample(data: bytes) -> Sample:
    """Strict inverse of :func:`encode_sample`."""
    if not isinstance(data, bytes) or len(data) != SAMPLE_SIZE:
        raise InputError(f"a sample is exactly {SAMPLE_SIZE} bytes", code="bad_length")
    sample = Sample._make(_SAMPLE_STRUCT.unpack(data))
    problem = _sample_problem(sample)
    if problem:
        raise InputError(problem, code="bad_sample")
    return sample


def _check_count(n: int) -> None:
    if n == 0:
        raise InputError("a batch needs at least one sample", code="empty_batch")
    if n > MAX_SAMPLES:
        raise InputError(f"a batch holds at most {MAX_SAMPLES} samples, got {n}", code="batch_too_large")


def encode_samples(samples: Iterable[Sample]) -> bytes:
    """The blob of a sample list (1..MAX_SAMPLES samples, each valid)."""
    if isinstance(samples, Sequence):
        _check_count(len(samples))
    blob = b"".join(_pack(sample) for sample in samples)
    columns = _columns(_array(blob))
    bad = _first_bad_sample(columns)
    if bad >= 0:
        raise InputError(f"sample {bad}: {_sample_problem(_unpack(blob, bad))}", code="bad_sample")
    return blob


def decode_samples(blob: bytes) -> list[Sample]:
    """Strict inverse of :func:`encode_samples` (lengths and field ranges; batch order is not checked here)."""
    columns = _columns(_array(blob))
    bad = _first_bad_sample(columns)
    if bad >= 0:
        raise InputError(f"sample {bad}: {_sample_problem(_unpack(blob, bad))}", code="bad_sample")
    return [Sample._make(values) for values in _SAMPLE_STRUCT.iter_unpack(blob)]


def _unpack(blob: bytes, index: int) -> Sample:
    return Sample._make(_SAMPLE_STRUCT.unpack_from(blob, index * SAMPLE_SIZE))


def _array(blob: bytes) -> np.ndarray:
    """The blob as a structured array, after the length checks (no copy)."""
    if not isinstance(blob, bytes):
        raise InputError("a sample blob must be bytes", code="bad_encoding")
    if len(blob) % SAMPLE_SIZE:
        raise InputError(f"blob length {len(blob)} is not a multiple of {SAMPLE_SIZE}", code="bad_length")
    _check_count(len(blob) // SAMPLE_SIZE)
    return np.frombuffer(blob, dtype=SAMPLE_DTYPE)


class _Columns(NamedTuple):
    """Native int64 copies of the fields: one byte swap each, then no overflow in any formula."""

    t_s: np.ndarray
    speed_cms: np.ndarray
    accel_mms2: np.ndarray
    brake: np.ndarray
    odometer_m: np.ndarray
    limit_kmh: np.ndarray
    lat_e6: np.ndarray
    lon_e6: np.ndarray
    utc_offset_min: np.ndarray


def _columns(array: np.ndarray) -> _Columns:
    return _Columns(*(array[name].astype(np.int64) for name in Sample._fields))


def _first_bad_sample(c: _Columns) -> int:
    """Index of the first sample with a field out of range, or -1."""
    offset = c.utc_offset_min
    bad = (
        (c.brake > 1)
        | (np.abs(c.lat_e6) > MAX_LAT_E6)
        | (np.abs(c.lon_e6) > MAX_LON_E6)
        | (offset < MIN_UTC_OFFSET_MIN)
        | (offset > MAX_UTC_OFFSET_MIN)
        | (offset % UTC_OFFSET_STEP_MIN != 0)
    )
    return int(np.argmax(bad)) if bad.any() else -1


def _first_descent(values: np.ndarray, *, strict: bool) -> int:
    """First i with values[i+1] <= values[i] (strict) or < (not strict), or -1."""
    step = values[1:] - values[:-1]
    bad = step <= 0 if strict else step < 0
    return int(np.argmax(bad)) if bad.any() else -1


# ---------------------------------------------------------------------------------------------
# Aggregates


def is_night(start_ms: int, sample: Sample) -> bool:
    """Local 22:00-06:00 for one sample (module docstring); the mismatch checks use it per sample."""
    local_ms = start_ms + 1000 * sample.t_s + 60_000 * sample.utc_offset_min
    time_of_day = local_ms % DAY_MS
    return time_of_day >= NIGHT_FROM_MS or time_of_day < NIGHT_UNTIL_MS


def _is_hard(sample: Sample) -> bool:
    return sample.accel_mms2 < -HARD_BRAKING_MMS2


def _is_over_limit(sample: Sample) -> bool:
    return sample.limit_kmh > 0 and sample.speed_cms * 36 > sample.limit_kmh * 1000


class _Masks(NamedTuple):
    episode_start: np.ndarray  # per sample: a hard sample whose predecessor is not hard
    over_limit: np.ndarray     # per sample
    night_step: np.ndarray     # per consecutive pair (i-1, i), indexed i-1: sample i is at night
    step_m: np.ndarray         # odometer difference per pair, indexed like night_step


def _masks(c: _Columns, start_ms: int) -> _Masks:
    hard = c.accel_mms2 < -HARD_BRAKING_MMS2
    episode_start = hard.copy()
    episode_start[1:] &= ~hard[:-1]
    over_limit = (c.limit_kmh > 0) & (c.speed_cms * 36 > c.limit_kmh * 1000)
    time_of_day = (start_ms + c.t_s[1:] * 1000 + c.utc_offset_min[1:] * 60_000) % DAY_MS
    night_step = (time_of_day >= NIGHT_FROM_MS) | (time_of_day < NIGHT_UNTIL_MS)
    return _Masks(episode_start, over_limit, night_step, c.odometer_m[1:] - c.odometer_m[:-1])


def _aggregates(c: _Columns, masks: _Masks) -> dict[str, int]:
    """Aggregate values as plain ints (not yet range-checked: an invalid batch may give negatives)."""
    return {
        "distance_m": int(c.odometer_m[-1] - c.odometer_m[0]),
        "hard_braking": int(np.count_nonzero(masks.episode_start)),
        "over_limit_s": int(np.count_nonzero(masks.over_limit)),
        "night_distance_m": int(masks.step_m[masks.night_step].sum()),
        "max_speed_cms": int(c.speed_cms.max()),
        "odometer_end_m": int(c.odometer_m[-1]),
        "samples": len(c.t_s),
    }


def compute_aggregates(blob: bytes, start_ms: int) -> Aggregates:
    """Aggregates of a valid blob (field ranges, order and odometer are checked first)."""
    columns = _checked_columns(blob, error=InputError)
    return Aggregates(**_aggregates(columns, _masks(columns, start_ms)))


def _checked_columns(blob: bytes, *, error: type[BlokError]) -> _Columns:
    """Decode and run the per-sample and ordering checks; ``error`` is InputError when building."""
    columns = _columns(_array(blob))
    bad = _first_bad_sample(columns)
    if bad >= 0:
        raise InputError(f"sample {bad}: {_sample_problem(_unpack(blob, bad))}", code="bad_sample")
    i = _first_descent(columns.t_s, strict=True)
    if i >= 0:
        raise error(f"t_s must strictly increase: sample {i + 1} has t_s {columns.t_s[i + 1]} after "
                    f"{columns.t_s[i]}", code="samples_out_of_order")
    i = _first_descent(columns.odometer_m, strict=False)
    if i >= 0:
        raise error(f"odometer goes backwards at sample {i + 1}: {columns.odometer_m[i + 1]} after "
                    f"{columns.odometer_m[i]}", code="odometer_backwards")
    return columns


# ---------------------------------------------------------------------------------------------
# Leaves, header, signature


def leaf_hashes(blob: bytes) -> list[bytes]:
    """The RFC 9162 leaf hashes of a blob: one per ``LEAF_SAMPLES`` consecutive samples."""
    _array(blob)     # length and size checks
    sha = _leaf_sha256
    return [sha(b"\x00" + blob[i:i + LEAF_BYTES]).digest() for i in range(0, len(blob), LEAF_BYTES)]


def leaf_count(samples: int) -> int:
    return -(-samples // LEAF_SAMPLES)


def header_bytes(header: TelematicsHeader) -> bytes:
    """The signed form: canonical JSON (RFC 8785) of every header field except the signature."""
    body = msgspec.to_builtins(header)
    del body["signature"]
    return canonical.encode(body)


def header_to_dict(header: TelematicsHeader) -> dict[str, Any]:
    """JSON-able dict (root hex, signature base64), the inverse of :func:`header_from_dict`."""
    result: dict[str, Any] = msgspec.to_builtins(header)
    return result


def header_from_dict(data: Any) -> TelematicsHeader:
    """Parse untrusted header JSON strictly: exact fields, integer types and ranges, VIN, did, encodings."""
    try:
        header = msgspec.convert(data, TelematicsHeader, strict=True)
    except msgspec.ValidationError as exc:
        raise InputError(f"malformed telematics header: {exc}", code="bad_header") from None
    _check_header_fields(header)
    return header


def _check_header_fields(header: TelematicsHeader) -> bytes:
    """What the schema cannot say: a canonical VIN, an Ed25519 did:key, a 64-byte signature (returned)."""
    parse_vin(header.vin)
    public_key_from_did(header.device)
    return unb64(header.signature, size=64, what="header signature")


def _check_signature(header: TelematicsHeader) -> None:
    """The device's signature over the header: without it no other check means anything."""
    if not isinstance(header, TelematicsHeader):
        raise InputError("expected a TelematicsHeader", code="bad_header")
    signature = _check_header_fields(header)
    if not verify_signature(header.device, DOMAIN_TELEMATICS, header_bytes(header), signature):
        raise VerificationError("the device signature over the batch header does not verify", code="bad_signature")


def seal_batch(signer: Signer, vin: str, seq: int, start_ms: int, blob: bytes) -> TelematicsHeader:
    """Check an encoded blob, compute root and aggregates, and sign the header with the device key."""
    parse_vin(vin)
    for name, value in (("seq", seq), ("start_ms", start_ms)):
        if type(value) is not int or not 0 <= value <= MAX_SAFE_INTEGER:
            raise InputError(f"{name} must be an integer in 0..2**53-1", code="bad_header")
    columns = _checked_columns(blob, error=InputError)
    aggregates = Aggregates(**_aggregates(columns, _masks(columns, start_ms)))
    root = merkle.batch_root(leaf_hashes(blob))
    unsigned = TelematicsHeader(vin=vin, device=signer.did, seq=seq, start_ms=start_ms, count=aggregates.samples,
                                root=root.hex(), aggregates=aggregates, signature="")
    signature = signer.sign(DOMAIN_TELEMATICS, header_bytes(unsigned))
    return msgspec.structs.replace(unsigned, signature=b64(signature))


def build_batch(signer: Signer, vin: str, seq: int, start_ms: int,
                samples: Sequence[Sample]) -> tuple[TelematicsHeader, bytes]:
    """Encode, check and sign a batch; returns the header (on chain) and the blob (off chain)."""
    blob = encode_samples(samples)
    return seal_batch(signer, vin, seq, start_ms, blob), blob


def verify_batch(header: TelematicsHeader, blob: bytes | None = None, *, check_signature: bool = True) -> None:
    """Raise unless the header is signed by its device and, given the samples, tells the truth about them.

    With a blob the root is checked first, so a blob that is not the committed one is reported as
    ``root_mismatch`` and never blamed on the device; after that, ``count_mismatch``, ``bad_sample``,
    ``samples_out_of_order``, ``odometer_backwards`` and ``aggregates_mismatch`` are the device's.
    ``check_signature=False`` for a header whose signature was already checked (a committed one).
    """
    if check_signature:
        _check_signature(header)
    if header.count != header.aggregates.samples:
        raise VerificationError(f"aggregates mismatch: samples {header.aggregates.samples} != count {header.count}",
                                code="aggregates_mismatch")
    if blob is None:
        return
    _array(blob)
    root = merkle.batch_root(leaf_hashes(blob))
    if root.hex() != header.root:
        raise VerificationError("the samples do not hash to the header's Merkle root", code="root_mismatch")
    n = len(blob) // SAMPLE_SIZE
    if n != header.count:
        raise VerificationError(f"the header counts {header.count} samples, the blob holds {n}",
                                code="count_mismatch")
    columns = _checked_columns(blob, error=VerificationError)
    actual = _aggregates(columns, _masks(columns, header.start_ms))
    claimed = msgspec.structs.asdict(header.aggregates)
    wrong = [f"{name} claimed {claimed[name]}, samples give {actual[name]}"
             for name in AGGREGATE_NAMES if claimed[name] != actual[name]]
    if wrong:
        raise VerificationError("aggregates mismatch: " + "; ".join(wrong), code="aggregates_mismatch")


# ---------------------------------------------------------------------------------------------
# Sample proofs


def prove_samples(blob: bytes, indexes: Iterable[int]) -> list[dict[str, Any]]:
    """Inclusion proofs of several samples, sharing one tree build (O(n) hashing)."""
    levels = merkle.tree_levels(leaf_hashes(blob))
    return [_proof(blob, levels, index) for index in indexes]


def prove_sample(blob: bytes, index: int) -> dict[str, Any]:
    """``{"index", "leaf" (base64 of the samples of the sample's leaf), "path" (base64 RFC 9162
    inclusion path of that leaf)}`` for one sample."""
    return prove_samples(blob, [index])[0]


def _proof(blob: bytes, levels: list[list[bytes]], index: int) -> dict[str, Any]:
    count = len(blob) // SAMPLE_SIZE
    if type(index) is not int or not 0 <= index < count:
        raise InputError(f"no sample {index!r} in a batch of {count}", code="bad_proof")
    leaf = index // LEAF_SAMPLES
    path = merkle.inclusion_path(levels, leaf)
    return {"index": index, "leaf": b64(blob[leaf * LEAF_BYTES:(leaf + 1) * LEAF_BYTES]),
            "path": [b64(h) for h in path]}


def _proven_leaf(header: TelematicsHeader, proof: Any) -> tuple[int, dict[int, bytes]]:
    """Check one proof's shape and its leaf's inclusion under ``header.root``; returns the proof's
    sample index and every sample the leaf proves (index -> 26 bytes)."""
    if not isinstance(proof, dict) or set(proof) != {"index", "leaf", "path"}:
        raise InputError("a sample proof is {index, leaf, path}", code="bad_proof")
    index, path = proof["index"], proof["path"]
    if type(index) is not int or not 0 <= index < header.count:
        raise InputError(f"sample index must be an integer in 0..{header.count - 1}", code="bad_proof")
    if not isinstance(path, list) or len(path) > MAX_PROOF_HASHES or not all(isinstance(h, str) for h in path):
        raise InputError("a sample proof path is a short list of base64 hashes", code="bad_proof")
    if not isinstance(proof["leaf"], str):
        raise InputError("the proven leaf is base64 text", code="bad_proof")
    leaf = index // LEAF_SAMPLES
    first = leaf * LEAF_SAMPLES
    size = min(LEAF_SAMPLES, header.count - first) * SAMPLE_SIZE
    raw = unb64(proof["leaf"], size=size, what="leaf")
    hashes = [unb64(h, size=merkle.HASH_SIZE, what="proof hash") for h in path]
    try:
        merkle.verify_inclusion(leaf, leaf_count(header.count), merkle.leaf_hash(raw), hashes,
                                bytes.fromhex(header.root))
    except VerificationError as exc:
        raise VerificationError(f"sample {index} is not under the header root: {exc.message}",
                                code="inclusion_failed") from None
    return index, {first + k: raw[k * SAMPLE_SIZE:(k + 1) * SAMPLE_SIZE] for k in range(size // SAMPLE_SIZE)}


def verify_sample(header: TelematicsHeader, proof: dict[str, Any], *, check_signature: bool = True) -> Sample:
    """The sample a proof shows under a (signed) header; ``check_signature=False`` when already checked."""
    if check_signature:
        _check_signature(header)
    index, samples = _proven_leaf(header, proof)
    return decode_sample(samples[index])


# ---------------------------------------------------------------------------------------------
# Mismatch proofs

# Claims a mismatch proof can refute, in the order prove_mismatch prefers them on equal size.
STRUCTURE_CLAIMS = ("samples", "count", "bad_sample", "samples_out_of_order", "odometer_backwards")
VALUE_CLAIMS = ("distance_m", "odometer_end_m", "max_speed_cms", "over_limit_s", "hard_braking",
                "night_distance_m")
MISMATCH_CLAIMS = (*STRUCTURE_CLAIMS, *VALUE_CLAIMS)
assert {*VALUE_CLAIMS, "samples"} == set(AGGREGATE_NAMES)
_PROOF_OVERHEAD = 24  # bytes of JSON around each sample proof, for comparing evidence sizes


def _findings(header: TelematicsHeader, blob: bytes) -> dict[str, list[int] | None]:
    """Every false claim of a header over its own (root-matching, count-matching) blob.

    Value: sample indexes whose proofs refute the claim, or None where only the full blob can.
    """
    columns = _columns(_array(blob))
    found: dict[str, list[int] | None] = {}
    bad = _first_bad_sample(columns)
    if bad >= 0:
        found["bad_sample"] = [bad]
    i = _first_descent(columns.t_s, strict=True)
    if i >= 0:
        found["samples_out_of_order"] = [i, i + 1]
    i = _first_descent(columns.odometer_m, strict=False)
    if i >= 0:
        found["odometer_backwards"] = [i, i + 1]
    masks = _masks(columns, header.start_ms)
    actual = _aggregates(columns, masks)
    claimed = msgspec.structs.asdict(header.aggregates)
    last = len(columns.t_s) - 1
    for name in VALUE_CLAIMS:
        claim, value = claimed[name], actual[name]
        if claim == value:
            continue
        evidence: list[int] | None = None
        if name == "distance_m":
            evidence = sorted({0, last})
        elif name == "odometer_end_m":
            evidence = [last]
        elif claim < value and name == "max_speed_cms":
            evidence = [int(np.argmax(columns.speed_cms))]
        elif claim < value and name == "over_limit_s":
            evidence = np.flatnonzero(masks.over_limit)[:claim + 1].tolist()
        elif claim < value and name == "hard_braking":
            starts = np.flatnonzero(masks.episode_start)[:claim + 1].tolist()
            evidence = sorted({j for s in starts for j in (s - 1, s) if j >= 0})
        elif claim < value and name == "night_distance_m":
            evidence = _night_evidence(masks, claim)
        found[name] = evidence
    return found


def _night_evidence(masks: _Masks, claim: int) -> list[int]:
    """Fewest night pairs (largest steps first) whose distances add up to more than ``claim``."""
    steps = np.where(masks.night_step & (masks.step_m > 0), masks.step_m, 0)
    order = np.argsort(-steps, kind="stable")
    needed = int(np.searchsorted(np.cumsum(steps[order]), claim, side="right")) + 1
    return sorted({j for pair in order[:needed].tolist() for j in (pair, pair + 1)})


def prove_mismatch(header: TelematicsHeader, blob: bytes) -> dict[str, Any] | None:
    """Evidence that the header is false about ``blob``, or None when it is honest.

    Output: ``{"claim": name}`` plus ``"samples": [sample proofs]`` or ``"blob": base64`` (or nothing,
    for ``samples``). Among all false claims the one with the smallest evidence (in bytes) is chosen.
    Raises ``root_mismatch`` when the blob is not the batch the header commits to (it proves nothing).
    """
    _check_signature(header)
    if header.count != header.aggregates.samples:
        return {"claim": "samples"}
    leaves = leaf_hashes(blob)
    levels = merkle.tree_levels(leaves)
    if levels[-1][0].hex() != header.root:
        raise VerificationError("the blob is not the batch this header commits to", code="root_mismatch")
    if len(blob) // SAMPLE_SIZE != header.count:
        return {"claim": "count", "blob": b64(blob)}
    blob_cost = len(blob)
    best: tuple[int, int, str, list[int] | None] | None = None
    for name, indexes in _findings(header, blob).items():
        cost = blob_cost
        if indexes is not None:
            indexes = sorted({i // LEAF_SAMPLES: i for i in indexes}.values())    # one proof per leaf
            cost = sum(_PROOF_OVERHEAD + LEAF_BYTES + merkle.HASH_SIZE * len(merkle.inclusion_path(
                levels, i // LEAF_SAMPLES)) for i in indexes)
            if cost >= blob_cost:
                indexes, cost = None, blob_cost
        candidate = (cost, MISMATCH_CLAIMS.index(name), name, indexes)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if best is None:
        return None
    _, _, name, indexes = best
    if indexes is None:
        return {"claim": name, "blob": b64(blob)}
    return {"claim": name, "samples": [_proof(blob, levels, i) for i in indexes]}


def verify_mismatch(header: TelematicsHeader, proof: Any) -> str:
    """The name of the claim the proof refutes, or ``VerificationError`` (``not_disproved`` and others).

    Only the signed header and the proven bytes are trusted; the proof's own numbers are recomputed.
    Names: an aggregate name, or ``samples``, ``count``, ``bad_sample``, ``samples_out_of_order``,
    ``odometer_backwards`` for a header that is false about the shape of its batch.
    """
    _check_signature(header)
    if not isinstance(proof, dict) or proof.get("claim") not in MISMATCH_CLAIMS:
        raise InputError(f"a mismatch proof names one of {', '.join(MISMATCH_CLAIMS)}", code="bad_proof")
    claim: str = proof["claim"]
    if claim == "samples":
        if set(proof) != {"claim"}:
            raise InputError("a samples claim carries no evidence", code="bad_proof")
        if header.count != header.aggregates.samples:
            return claim
        raise VerificationError("count and aggregates.samples agree", code="not_disproved")
    if set(proof) == {"claim", "blob"} and isinstance(proof["blob"], str):
        return _verify_blob_evidence(header, claim, unb64(proof["blob"], what="blob"))
    if claim == "count" or set(proof) != {"claim", "samples"} or not isinstance(proof["samples"], list):
        raise InputError("mismatch evidence is either samples (a list of proofs) or blob", code="bad_proof")
    proofs = proof["samples"]
    if not proofs or len(proofs) > header.count:
        raise InputError("mismatch evidence needs 1..count sample proofs", code="bad_proof")
    proven: dict[int, Sample] = {}
    for item in proofs:
        index, leaf_samples = _proven_leaf(header, item)
        if index in proven:
            raise InputError(f"the leaf of sample {index} is proven twice", code="bad_proof")
        for i, raw in leaf_samples.items():
            proven[i] = Sample._make(_SAMPLE_STRUCT.unpack(raw))
    if _refuted_by_samples(header, claim, proven):
        return claim
    raise VerificationError(f"the proven samples do not refute {claim}", code="not_disproved")


def _refuted_by_samples(header: TelematicsHeader, claim: str, proven: dict[int, Sample]) -> bool:
    """Whether Merkle-proven samples alone refute ``claim`` (lower bounds, see the module docstring)."""
    claimed = header.aggregates
    pairs = [(proven[i - 1], proven[i]) for i in sorted(proven) if i - 1 in proven]
    if claim == "bad_sample":
        return any(_sample_problem(s) for s in proven.values())
    if claim == "samples_out_of_order":
        return any(later.t_s <= earlier.t_s for earlier, later in pairs)
    if claim == "odometer_backwards":
        return any(later.odometer_m < earlier.odometer_m for earlier, later in pairs)
    if claim == "distance_m":
        first, last = proven.get(0), proven.get(header.count - 1)
        return first is not None and last is not None and last.odometer_m - first.odometer_m != claimed.distance_m
    if claim == "odometer_end_m":
        last_sample = proven.get(header.count - 1)
        return last_sample is not None and last_sample.odometer_m != claimed.odometer_end_m
    if claim == "max_speed_cms":
        return max(s.speed_cms for s in proven.values()) > claimed.max_speed_cms
    if claim == "over_limit_s":
        return sum(_is_over_limit(s) for s in proven.values()) > claimed.over_limit_s
    if claim == "hard_braking":
        starts = sum(_is_hard(s) and (i == 0 or (i - 1 in proven and not _is_hard(proven[i - 1])))
                     for i, s in proven.items())
        return starts > claimed.hard_braking
    if claim == "night_distance_m":
        night_m = sum(max(0, later.odometer_m - earlier.odometer_m) for earlier, later in pairs
                      if is_night(header.start_ms, later))
        return night_m > claimed.night_distance_m
    return False


def _verify_blob_evidence(header: TelematicsHeader, claim: str, blob: bytes) -> str:
    """Full-sample-set evidence: it must be the committed batch; then every claim is checked exactly."""
    _array(blob)
    if merkle.batch_root(leaf_hashes(blob)).hex() != header.root:
        raise VerificationError("the evidence blob is not the batch this header commits to", code="root_mismatch")
    count_false = len(blob) // SAMPLE_SIZE != header.count
    if claim == "count" and count_false:
        return claim
    if not count_false and claim in _findings(header, blob):
        return claim
    raise VerificationError(f"the samples do not refute {claim}", code="not_disproved")


# ---------------------------------------------------------------------------------------------
# Parallel ingestion and benchmark


def _verify_chunk(items: list[tuple[TelematicsHeader, bytes]]) -> list[tuple[str, str] | None]:
    """:func:`verify_batch` per item; errors travel as (code, message) tuples (a pickled BlokError loses ``code``)."""
    results: list[tuple[str, str] | None] = []
    for header, blob in items:
        try:
            verify_batch(header, blob)
        except BlokError as exc:
            results.append((exc.code, exc.message))
        else:
            results.append(None)
    return results


def ingest_pool(workers: int = 2) -> ProcessPoolExecutor:
    """The helper processes for :func:`verify_batches_parallel`: ``workers - 1`` (the caller is the other one).

    forkserver where available: forking a node process that already runs API threads can deadlock.
    """
    import multiprocessing

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=max(1, workers - 1), mp_context=multiprocessing.get_context(method))


In = TypeVar("In")
Out = TypeVar("Out")
CHUNK_SAMPLES = 16_384  # work unit handed to a process: big enough to amortise pickling, small enough to balance


def verify_batches_parallel(items: Sequence[tuple[TelematicsHeader, bytes]], workers: int = 2, *,
                            executor: Executor | None = None) -> list[tuple[str, str] | None]:
    """:func:`verify_batch` over many batches on ``workers`` processes: None per good batch, else (code, message).

    SHA-256 of small messages holds the GIL, so threads cannot help; processes can. The calling
    process is one of the workers (it would otherwise sit idle while its pickling thread competes
    for the CPU), the others come from ``executor`` (use :func:`ingest_pool` and keep it: starting
    processes costs more than verifying a few batches). Work is handed out in chunks on demand, the
    pool from the front and the caller from the back, so a slow or busy core does not stall the rest.
    """
    if workers <= 1 or len(items) <= 1:
        return _verify_chunk(list(items))
    chunks = _chunk_items(items)
    if executor is None:
        with ingest_pool(workers) as pool:
            return _share_out(_verify_chunk, chunks, pool, workers - 1)
    return _share_out(_verify_chunk, chunks, executor, workers - 1)


def _chunk_items(items: Sequence[tuple[TelematicsHeader, bytes]]) -> list[list[tuple[TelematicsHeader, bytes]]]:
    chunks: list[list[tuple[TelematicsHeader, bytes]]] = [[]]
    samples_in_chunk = 0
    for item in items:
        if samples_in_chunk >= CHUNK_SAMPLES:
            chunks.append([])
            samples_in_chunk = 0
        chunks[-1].append(item)
        samples_in_chunk += len(item[1]) // SAMPLE_SIZE
    return chunks


def _share_out(work: Callable[[list[In]], list[Out]], chunks: list[list[In]], pool: Executor,
               helpers: int) -> list[Out]:
    """``work`` over every chunk, on the pool and in this process; results in input order."""
    results: list[list[Out] | None] = [None] * len(chunks)
    front, back = 0, len(chunks)
    in_flight: dict[Future[list[Out]], int] = {}

    def top_up() -> None:
        nonlocal front
        while len(in_flight) < 2 * helpers and front < back:
            in_flight[pool.submit(work, chunks[front])] = front
            front += 1

    def harvest(timeout: float | None) -> None:
        done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            results[in_flight.pop(future)] = future.result()

    top_up()
    while front < back:
        back -= 1
        results[back] = work(chunks[back])
        harvest(0)
        top_up()
    while in_flight:
        harvest(None)
    return [result for chunk in results for result in chunk or ()]


def _synthetic_blob(seed: int, n: int) -> bytes:
    """Plausible driving for the benchmark: a speed random walk, some hard braking, mixed known limits."""
    rng = np.random.default_rng(seed)
    speed = np.clip(np.cumsum(rng.integers(-150, 151, n)) + 1500, 0, 4000)
    array = np.zeros(n, dtype=SAMPLE_DTYPE)
    array["t_s"] = np.arange(n)
    array["speed_cms"] = speed
    array["accel_mms2"] = rng.integers(-4500, 3000, n)
    array["brake"] = array["accel_mms2"] < -1000
    array["odometer_m"] = 40_000_000 + np.cumsum(speed // 100)
    array["limit_kmh"] = rng.choice(np.array([0, 30, 50, 80, 100, 130]), n)
    array["lat_e6"] = 48_137_000 + np.cumsum(rng.integers(-50, 51, n))
    array["lon_e6"] = 11_575_000 + np.cumsum(rng.integers(-50, 51, n))
    array["utc_offset_min"] = 60
    return array.tobytes()


def _seal_synthetic(tasks: list[tuple[bytes, str, int, int, int]]) -> list[tuple[TelematicsHeader, bytes]]:
    """Benchmark batches, generated and sealed on whichever process takes the task (the caller or a helper)."""
    sealed = []
    for seed, vin, seq, start_ms, n in tasks:
        blob = _synthetic_blob(seq, n)
        sealed.append((seal_batch(Signer.from_seed(seed), vin, seq, start_ms, blob), blob))
    return sealed


def _timed_verify_chunk(items: list[tuple[TelematicsHeader, bytes]]) -> list[tuple[int, float]]:
    """Benchmark worker: verify a chunk and report (failures, CPU seconds this process spent on it)."""
    import time

    cpu = time.thread_time()
    failures = sum(result is not None for result in _verify_chunk(items))
    return [(failures, time.thread_time() - cpu)]


def bench_ingest(total_samples: int = 1_000_000, batch_size: int = 3_600, workers: int = 2) -> dict[str, Any]:
    """Ingestion speed in samples/s: signature, decode, order, aggregates and Merkle root per batch.

    Single process, then ``workers`` processes (the caller and a warm pool, as a node would run it).
    Shared machines steal CPU, so beside wall-clock rates it reports rates per CPU-second actually
    used (what a dedicated core would do), the parts of one batch, and a sample-proof check.
    """
    import time

    batch_size = max(1, min(batch_size, MAX_SAMPLES))
    sizes = [batch_size] * (total_samples // batch_size)
    if total_samples % batch_size:
        sizes.append(total_samples % batch_size)
    signer = Signer.deterministic("bench/telematics-device")
    vin, start_ms = "1HGCM82633A004352", 1_700_000_000_000
    tasks = [(signer.seed, vin, seq, start_ms + seq * 3_600_000, n) for seq, n in enumerate(sizes)]
    with ingest_pool(workers) as pool:
        items = _share_out(_seal_synthetic, [tasks[i:i + 4] for i in range(0, len(tasks), 4)], pool, workers - 1)
        _share_out(_timed_verify_chunk, _chunk_items(items[:workers * 8]), pool, workers - 1)  # warm up

        wall, cpu = time.perf_counter(), time.thread_time()
        single_failures = sum(r is not None for r in _verify_chunk(items))
        single_wall, single_cpu = time.perf_counter() - wall, time.thread_time() - cpu

        wall = time.perf_counter()
        timed = _share_out(_timed_verify_chunk, _chunk_items(items), pool, workers - 1)
        parallel_wall = time.perf_counter() - wall
    parallel_cpu = sum(seconds for _, seconds in timed)
    if single_failures or any(failures for failures, _ in timed):
        raise RuntimeError("a benchmark batch failed to verify")

    header, blob = items[0]
    n = header.count
    parts: dict[str, Callable[[], object]] = {
        "leaf_hashing": lambda: leaf_hashes(blob),
        "merkle_tree": lambda: merkle.batch_root(leaves),
        "decode_order_aggregates": lambda: _recompute(blob, header.start_ms),
        "signature": lambda: _check_signature(header),
    }
    leaves = leaf_hashes(blob)
    part_rates = {}
    for name, run in parts.items():
        best = min(_cpu_seconds(run) for _ in range(5))
        part_rates[name] = round(n / best)
    proof = prove_sample(blob, n // 2)
    rounds = 200
    inclusion = _cpu_seconds(lambda: [verify_sample(header, proof, check_signature=False) for _ in range(rounds)])
    signed = _cpu_seconds(lambda: [verify_sample(header, proof) for _ in range(rounds)])
    return {
        "total_samples": total_samples,
        "batch_size": batch_size,
        "batches": len(items),
        "workers": workers,
        "single_process_samples_per_s": round(total_samples / single_wall),
        "single_process_samples_per_cpu_s": round(total_samples / single_cpu),
        "parallel_samples_per_s": round(total_samples / parallel_wall),
        "parallel_cpu_s": round(parallel_cpu, 3),
        "parallel_wall_s": round(parallel_wall, 3),
        "parallel_samples_per_cpu_s": round(total_samples / parallel_cpu),
        "parts_samples_per_cpu_s": part_rates,
        "verify_sample_us": round(inclusion / rounds * 1e6, 1),
        "verify_sample_with_signature_us": round(signed / rounds * 1e6, 1),
    }


def _recompute(blob: bytes, start_ms: int) -> dict[str, int]:
    columns = _checked_columns(blob, error=VerificationError)
    return _aggregates(columns, _masks(columns, start_ms))


def _cpu_seconds(run: Callable[[], object]) -> float:
    import time

    cpu = time.thread_time()
    run()
    return time.thread_time() - cpu
