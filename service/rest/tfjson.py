"""TensorFlow Serving's REST JSON formats, both ways.

Requests (https://www.tensorflow.org/tfx/serving/api_rest#request_format_2):

* row format, ``"instances"``: a list with one entry per instance; an entry is the value
  of the signature's only input, or an object ``{input name: value}``;
* columnar format, ``"inputs"``: the value of the only input (batch included), or an
  object ``{input name: value}``;
* binary values are ``{"b64": "..."}``.

Answers: ``{"predictions": ...}`` for row requests - a list of values when one output is
returned, else a list of ``{output: value}`` objects - and ``{"outputs": ...}`` for
columnar ones - the value itself when one output is returned, else ``{output: value}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from service.dataplane import ModelMetadata, SignatureInfo, TensorInfo
from service.errors import InvalidInput
from service.rest.encoding import decode_b64, is_b64_object, json_type, numeric_array

# TensorFlow's DataType enum names, as TF Serving's metadata JSON spells them.
DTYPE_NAMES = {"float32": "DT_FLOAT", "int64": "DT_INT64", "bool": "DT_BOOL",
               "string": "DT_STRING", "int32": "DT_INT32", "float64": "DT_DOUBLE",
               "uint8": "DT_UINT8"}


def _named(value: Any) -> bool:
    """An object of named inputs (as opposed to a ``{"b64": ...}`` value)."""
    return isinstance(value, dict) and not is_b64_object(value)


def _only_input(signature_name: str, signature: SignatureInfo) -> str:
    if len(signature.inputs) != 1:
        raise InvalidInput(
            f"signature {signature_name!r} has inputs {sorted(signature.inputs)}: name them, "
            'as {"input name": value}'
        )
    return next(iter(signature.inputs))


def _check_names(names: Any, signature_name: str, signature: SignatureInfo) -> None:
    unknown = sorted(set(names) - set(signature.inputs))
    if unknown:
        raise InvalidInput(
            f"signature {signature_name!r} has no input(s) {unknown}; its inputs: "
            f"{', '.join(sorted(signature.inputs))}"
        )


def row_inputs(instances: Any, signature_name: str,
               signature: SignatureInfo) -> dict[str, np.ndarray]:
    """Tensors from the row format: instances are stacked along a new batch dimension."""
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be an array, got {json_type(instances)}')
    if not instances:
        raise InvalidInput('"instances" is empty: send at least one instance')
    if any(_named(item) for item in instances):
        if not all(_named(item) for item in instances):
            raise InvalidInput(
                "instances mix named ({input: value}) and unnamed values: use one form"
            )
        names = set(instances[0])
        for index, item in enumerate(instances):
            if set(item) != names:
                raise InvalidInput(
                    f"instance {index} names inputs {sorted(item)}, instance 0 names "
                    f"{sorted(names)}: every instance must name the same inputs"
                )
        _check_names(names, signature_name, signature)
        return {
            name: to_tensor([item[name] for item in instances], signature.inputs[name],
                            where=f"instances[*].{name}")
            for name in sorted(names)
        }
    name = _only_input(signature_name, signature)
    return {name: to_tensor(instances, signature.inputs[name], where="instances")}


def columnar_inputs(inputs: Any, signature_name: str,
                    signature: SignatureInfo) -> dict[str, np.ndarray]:
    """Tensors from the columnar format: each value already holds the whole batch."""
    if _named(inputs):
        if not inputs:
            raise InvalidInput('"inputs" is an empty object: name at least one input')
        _check_names(inputs, signature_name, signature)
        return {name: to_tensor(value, signature.inputs[name], where=f"inputs[{name!r}]")
                for name, value in inputs.items()}
    name = _only_input(signature_name, signature)
    return {name: to_tensor(inputs, signature.inputs[name], where="inputs")}


# Deepest nesting of a string input accepted: a batch of encoded images is rank 1, and
# TF Serving's row format adds at most one level.
MAX_STRING_RANK = 8


def to_tensor(value: Any, info: TensorInfo, *, where: str) -> np.ndarray:
    """A JSON value as an array of the input's dtype (strings: an object array of bytes)."""
    if info.dtype == "string":
        return _bytes_tensor(value, where=where)
    array = numeric_array(value, where=where)
    if info.dtype == "bool":
        return array.astype(bool)
    if array.dtype.kind == "f" and np.dtype(info.dtype).kind in "iu":
        raise InvalidInput(f"{where} must hold integers ({info.dtype}), got floats")
    return array.astype(info.dtype)


def _bytes_tensor(value: Any, *, where: str) -> np.ndarray:
    def convert(item: Any, path: str, depth: int) -> Any:
        if isinstance(item, list):
            if depth >= MAX_STRING_RANK:
                # Checked while walking: numpy iterates at most 32 dimensions (issue 39: a
                # 33-deep list was a 500), and no signature here takes more than a vector.
                raise InvalidInput(
                    f"{where} is nested more than {MAX_STRING_RANK} levels deep; string "
                    "inputs are vectors of encoded images"
                )
            return [convert(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item)]
        if isinstance(item, str):
            # TF Serving reads a plain string as the UTF-8 bytes of the text.
            return item.encode("utf-8")
        return decode_b64(item, where=path)

    nested = convert(value, where, 0)
    if not isinstance(nested, list):
        scalar = np.empty((), dtype=object)
        scalar[()] = nested
        return scalar
    # bytes are scalars to numpy, so this is an object array of the nesting's shape; ragged
    # nesting leaves lists inside it.
    array = np.array(nested, dtype=object)
    if not all(isinstance(item, bytes) for item in array.flat):
        raise InvalidInput(f"{where} is not a rectangular array (lengths differ)")
    return array


def _value(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:
        raise TypeError("string outputs are not produced by these signatures")
    return array  # encoding.dumps writes numpy arrays and their rows as they are


def row_answer(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``{"predictions": ...}`` exactly as TF Serving shapes row-format answers."""
    if len(outputs) == 1:
        return {"predictions": _value(next(iter(outputs.values())))}
    columns = {name: _value(array) for name, array in outputs.items()}
    count = len(next(iter(outputs.values())))
    return {"predictions": [{name: column[i] for name, column in columns.items()}
                            for i in range(count)]}


def columnar_answer(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``{"outputs": ...}`` exactly as TF Serving shapes columnar answers."""
    if len(outputs) == 1:
        return {"outputs": _value(next(iter(outputs.values())))}
    return {"outputs": {name: _value(array) for name, array in outputs.items()}}


def _tensor_info(name: str, info: TensorInfo) -> dict[str, Any]:
    return {
        "dtype": DTYPE_NAMES.get(info.dtype, "DT_INVALID"),
        "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in info.shape],
                         "unknown_rank": False},
        "name": name,
    }


def metadata_answer(metadata: ModelMetadata, *,
                    library_versions: bool = False) -> dict[str, Any]:
    """GetModelMetadata's JSON (``SignatureDefMap`` in protobuf's JSON mapping) + the manifest.

    The manifest's ``library_versions`` (the exact versions of TensorFlow, numpy ...
    the bundle was trained with) is left out unless ``library_versions``: it tells a caller
    what to attack, and the people who need it ask for it (issue 39).
    """
    signature_defs = {
        name: {
            "inputs": {k: _tensor_info(k, v) for k, v in sig.inputs.items()},
            "outputs": {k: _tensor_info(k, v) for k, v in sig.outputs.items()},
            "method_name": sig.method_name,
            "defaults": {},
        }
        for name, sig in metadata.signatures.items()
    }
    return {
        "model_spec": {"name": metadata.name, "signature_name": "",
                       "version": str(metadata.version)},
        "metadata": {"signature_def": {"signature_def": signature_defs}},
        "aecluster": metadata.manifest.model_dump(
            mode="json",
            exclude=None if library_versions else {"library_versions"}),
    }
