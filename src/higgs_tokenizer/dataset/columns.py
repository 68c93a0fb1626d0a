"""The source columns a job passes through to its output: their names and their types.

Every manifest or Parquet column other than the path (or audio) and id columns is
kept, with one Arrow type for the whole job so that all shards agree:

- a column's type is inferred from every item's value, so a column missing from
  some rows (the first one included) is kept, null where it is missing;
- a column whose values share no type (`1` in one row, `"high"` in another) is kept
  as text: strings as they are, other values as their JSON text (`1` → `"1"`,
  `[1, 2]` → `"[1, 2]"`), with a warning naming the column and where each type first
  appears; a column that is null everywhere is kept as text too;
- a column named like an output column (`duration`, ...) is kept as `meta_<name>`,
  with more `meta_` prefixes while that name is taken by another column.

Each output field records the source column it holds (field metadata), so the
names survive in the plan without a separate table.
"""

from __future__ import annotations

import base64
import json
import warnings

SOURCE_COLUMN = b"source_column"  # field metadata: the source column an output column holds
RENAMED_PREFIX = "meta_"


def passthrough_schema(extras: list[dict], ids: list[str], reserved: tuple[str, ...]):
    """One Arrow schema for the columns of `extras` (one dict per item, `ids` naming the items),
    none of them named like a `reserved` (output) column."""
    import pyarrow as pa

    names = list(dict.fromkeys(key for extra in extras for key in extra))  # every key, first seen first
    taken = set(reserved) | set(names)
    fields = []
    for name in names:
        values = [extra.get(name) for extra in extras]
        arrow_type = _common_type(values)
        if arrow_type is None:
            warnings.warn(f"column {name!r} {_mixed_types(values, ids)}: kept as text (JSON for non-strings)", stacklevel=2)
        if arrow_type is None or pa.types.is_null(arrow_type):
            arrow_type = pa.string()
        output_name = name
        if name in reserved:
            output_name = RENAMED_PREFIX + name
            while output_name in taken:
                output_name = RENAMED_PREFIX + output_name
            taken.add(output_name)
        fields.append(pa.field(output_name, arrow_type, metadata={SOURCE_COLUMN: name.encode()}))
    return pa.schema(fields)


def passthrough_arrays(schema, extras: list[dict]) -> dict:
    """The output columns `schema` describes, for items with these `extras`: {name: Arrow array}."""
    import pyarrow as pa

    arrays = {}
    for field in schema:
        source = (field.metadata or {}).get(SOURCE_COLUMN, field.name.encode()).decode()
        values = [extra.get(source) for extra in extras]
        if pa.types.is_string(field.type):
            values = [_as_text(v) for v in values]
        arrays[field.name] = pa.array(values, field.type)
    return arrays


def _common_type(values: list):
    """The Arrow type all `values` convert to, or None where they share none."""
    import pyarrow as pa

    try:
        return pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


def _mixed_types(values: list, ids: list[str]) -> str:
    first = {}
    for value, item_id in zip(values, ids):
        if value is not None:
            first.setdefault(type(value).__name__, item_id)
    return "holds values of no one type: " + ", ".join(f"{kind} (first in item {item_id!r})" for kind, item_id in first.items())


def _as_text(value):
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def schema_to_text(schema) -> str:
    """`schema` as text for the plan (base64 of its Arrow IPC form, field metadata included)."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str):
    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text))) if text else pa.schema([])
