"""msgpack encoding for arq jobs and Fusebox's stored records.

arq's default serializer is pickle; msgpack via msgspec is faster, smaller and
cannot execute code on load.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.schema import JobResult, JobSpec


def _enc_hook(obj: Any) -> Any:
    # arq stores exceptions in failed-job results; keep their text, never the object.
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_any_decoder = msgspec.msgpack.Decoder()
_spec_decoder = msgspec.msgpack.Decoder(JobSpec)
_result_decoder = msgspec.msgpack.Decoder(JobResult)

encode = _encoder.encode


def arq_serializer(obj: dict[str, Any]) -> bytes:
    """Plugged into arq as ``job_serializer`` on the pool and the worker."""
    return _encoder.encode(obj)


def arq_deserializer(data: bytes) -> dict[str, Any]:
    """Plugged into arq as ``job_deserializer``; job args stay msgpack bytes until the job decodes them."""
    out: dict[str, Any] = _any_decoder.decode(data)
    return out


def encode_spec(spec: JobSpec) -> bytes:
    return _encoder.encode(spec)


def decode_spec(data: bytes) -> JobSpec:
    return _spec_decoder.decode(data)


def encode_result(result: JobResult) -> bytes:
    return _encoder.encode(result)


def decode_result(data: bytes) -> JobResult:
    return _result_decoder.decode(data)
