"""The flatbuffers verifier for `.tflite` files, derived from the TFLite schema's generated reader.

The C++ interpreters read a flatbuffer through raw offsets: LiteRT runs the verifier flatc
generates from the schema (``VerifyModelBuffer``) before it builds an interpreter, TFLite Micro
runs none. No Python binding exposes that verifier, and the Python reader flatc generates
(``ai_edge_litert.schema_py_generated``, the one `load_tflite` parses with) does not verify:
``struct.unpack_from`` at a negative position reads from the end of the file, a vtable offset
that lands inside another table is followed as it is. So this module checks, before anything
reads the file, what flatbuffers' own ``Verifier`` checks (``flatbuffers/verifier.h``):

- every table starts 4-aligned inside the file, its vtable (table position minus the signed
  offset stored there) is 2-aligned, inside the file, of even size;
- every field a vtable declares lies inside the file and is aligned to its size;
- every offset is non-zero, below 2^31 and lands inside the file; every vector's and string's
  length fits the file (a string ends with its NUL);
- tables nest at most 64 deep and there are at most 1,000,000 of them.

Two limits are ours: flatbuffers may point many offsets at one table or vector, which the
C++ verifier accepts (up to its 1,000,000 tables) and every reader then walks or copies again
and again; here the tables, vectors and strings the walk visits, and the vector bytes they hold,
may not exceed what a file of that size can hold without such aliasing (with a margin).

The schema itself is not written out by hand: `schema_tables` reads it from the generated
reader's source (each accessor's vtable slot and how it reads the slot), so a new LiteRT
release with new option tables is verified with them.

Example:
    >>> from tfcompress.export.flatbuffer import schema_tables
    >>> fields = {f.name: f for f in schema_tables()["Tensor"]}
    >>> fields["shape"].kind, fields["shape"].fmt, fields["quantization"].table
    ('vector', '<i', 'QuantizationParameters')
"""

from __future__ import annotations

import inspect
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from tfcompress.errors import InvalidModelFileError

ROOT_TABLE = "Model"
MAX_DEPTH = 64  # flatbuffers::Verifier's default max_depth
MAX_TABLES = 1_000_000  # and its max_tables
MAX_BUFFER_SIZE = 2**31 - 1  # FLATBUFFERS_MAX_BUFFER_SIZE
# Our limits on aliasing: a file of n bytes without shared offsets holds at most n / 8 tables,
# vectors and strings (each needs its own 4-byte offset and 4-byte header) and at most n bytes of
# vector data. Twice that, plus a little for tiny files, is still linear in n.
_VISITS_PER_BYTE = 0.25
_VECTOR_BYTES_PER_BYTE = 2
_SLACK = 4096

_FORMATS = {
    "Bool": ("<?", 1), "Int8": ("<b", 1), "Uint8": ("<B", 1), "Int16": ("<h", 2), "Uint16": ("<H", 2),
    "Int32": ("<i", 4), "Uint32": ("<I", 4), "Int64": ("<q", 8), "Uint64": ("<Q", 8),
    "Float32": ("<f", 4), "Float64": ("<d", 8),
}


@dataclass(frozen=True)
class Field:
    """One field of a schema table, as its generated accessor reads it.

    ``kind`` is ``scalar``, ``string``, ``table``, ``vector`` (of scalars),
    ``vector_table`` or ``union``; ``fmt`` / ``size`` describe a scalar or a vector's element;
    ``table`` is the table a ``table`` / ``vector_table`` field holds; ``union`` maps a union's
    type values to table names and ``type_slot`` is the slot of its type field.

    Example:
        >>> fields = {f.name: f for f in schema_tables()["Tensor"]}
        >>> fields["shape"].kind, fields["shape"].fmt, fields["name"].kind, fields["quantization"].table
        ('vector', '<i', 'string', 'QuantizationParameters')
    """

    name: str
    slot: int
    kind: str
    fmt: str | None = None
    attr: str = ""
    size: int = 0
    table: str | None = None
    union: tuple[tuple[int, str], ...] | None = None
    type_slot: int | None = None

    @property
    def members(self) -> dict[int, str]:
        """A union's ``{type value: table}``."""
        return _members(self.union or ())


@cache
def _members(union: tuple[tuple[int, str], ...]) -> dict[int, str]:
    return dict(union)


@dataclass(frozen=True)
class Site:
    """One place in the file the verifier read: what it is, where, and the schema path to it.

    ``kind`` is ``table`` (``fmt`` None, ``name`` the table type), ``soffset`` (a table's
    offset to its vtable), ``vtable`` (a vtable entry), ``uoffset`` (an offset to a table,
    vector or string), ``length`` (a vector's or string's length), ``scalar`` (a field or a
    vector element) or ``union_type``.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> _ = to_tflite(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), "model.tflite", quantization=None)
        >>> data = open("model.tflite", "rb").read()
        >>> sites = []
        >>> verify_flatbuffer(data, "model.tflite", visit=sites.append)
        >>> sites[0].kind, sites[0].pos
        ('uoffset', 0)
        >>> sorted({site.kind for site in sites})
        ['length', 'scalar', 'soffset', 'table', 'union_type', 'uoffset', 'vtable']
    """

    kind: str
    pos: int
    fmt: str | None
    path: str
    name: str = ""


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _schema_module():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


_SKIP_SUFFIXES = ("Length", "IsNone", "AsNumpy")


@cache
def schema_tables() -> dict[str, tuple[Field, ...]]:
    """Every table of the TFLite schema: its fields, read from the generated reader's source.

    Raises:
        RuntimeError: an accessor follows no pattern flatc's Python generator writes (a
            LiteRT release built with a different flatc); `load_tflite` cannot verify then.
    """
    module = _schema_module()
    classes, functions = _source_blocks(inspect.getsource(module))
    unions = {name[: -len("Creator")]: _union_members(module, body)
              for name, body in functions.items() if name.endswith("Creator")}
    union_of = _union_fields(classes)
    tables: dict[str, tuple[Field, ...]] = {}
    for name, methods in classes.items():
        if "_tab = flatbuffers.table.Table" not in methods.get("Init", ""):
            continue
        fields = []
        for method_name, body in methods.items():
            if method_name == "Init" or method_name.startswith("GetRootAs") or \
                    method_name.endswith(_SKIP_SUFFIXES) or "BufferHasIdentifier" in method_name:
                continue
            fields.append(_field(name, method_name, body, unions, union_of))
        by_name = {f.name: f for f in fields}
        resolved = []
        for f in fields:
            if f.kind == "union":
                type_field = by_name.get(f"{f.name}_type")
                if type_field is None:
                    raise RuntimeError(f"schema: {name}.{f.name} is a union without a type field")
                f = Field(f.name, f.slot, "union", attr=f.attr, union=f.union, type_slot=type_field.slot)
            resolved.append(f)
        defaults = vars(getattr(module, f"{name}T")()) if hasattr(module, f"{name}T") else {}
        missing = [f.attr for f in resolved if f.attr not in defaults]
        if missing:
            raise RuntimeError(f"schema: {name}T has no attribute(s) {missing}")
        tables[name] = tuple(sorted(resolved, key=lambda f: f.slot))
    if ROOT_TABLE not in tables:
        raise RuntimeError("schema: the generated module has no Model table")
    return tables


_CLASS = re.compile(r"^class (\w+)\(")
_METHOD = re.compile(r"^    def (\w+)\(")
_FUNCTION = re.compile(r"^def (\w+)\(")


def _source_blocks(source: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """{class: {method: body}} and {function: body} of flatc's generated module (its layout:
    classes and functions at column 0, methods at column 4)."""
    classes: dict[str, dict[str, str]] = {}
    functions: dict[str, str] = {}
    current: list[str] | None = None
    methods: dict[str, str] | None = None
    for line in source.splitlines():
        if match := _CLASS.match(line):
            methods = classes.setdefault(match.group(1), {})
            current = None
        elif match := _FUNCTION.match(line):
            methods = None
            current = []
            functions[match.group(1)] = current  # type: ignore[assignment]
        elif methods is not None and (match := _METHOD.match(line)):
            current = []
            methods[match.group(1)] = current  # type: ignore[assignment]
        elif current is not None:
            current.append(line)
    joined = {c: {m: "\n".join(body) for m, body in ms.items()} for c, ms in classes.items()}
    return joined, {f: "\n".join(body) for f, body in functions.items()}


def _union_members(module, source: str) -> tuple[tuple[int, str], ...]:
    members = []
    for match in re.finditer(r"unionType == (\w+)\.(\w+):\s*return (\w+)T\.", source):
        enum, member, table = match.groups()
        members.append((int(getattr(getattr(module, enum), member)), table))
    return tuple(members)


def _union_fields(classes: dict[str, dict[str, str]]) -> dict[tuple[str, str], str]:
    """(table, accessor) -> union name, from the object API's ``XCreator(self.xType, t.X())``."""
    found = {}
    for name, methods in classes.items():
        if not name.endswith("T"):
            continue
        for body in methods.values():
            for match in re.finditer(r"(\w+)Creator\(self\.\w+, \w+\.(\w+)\(\)\)", body):
                found[(name[:-1], match.group(2))] = match.group(1)
    return found


def _field(table: str, method: str, source: str, unions, union_of) -> Field:
    field = _field_kind(table, method, source, unions, union_of)
    return Field(field.name, field.slot, field.kind, field.fmt, method[0].lower() + method[1:], field.size,
                 field.table, field.union, field.type_slot)


def _field_kind(table: str, method: str, source: str, unions, union_of) -> Field:
    slot_match = re.search(r"self\._tab\.Offset\((\d+)\)", source)
    if slot_match is None:
        raise RuntimeError(f"schema: {table}.{method} reads no vtable slot")
    slot = int(slot_match.group(1))
    name = _snake(method)
    scalar = re.search(r"number_types\.(\w+)Flags, (a|o) \+", source)
    obj = re.search(r"obj = (\w+)\(\)", source)
    if "self._tab.Union(" in source:
        union = union_of.get((table, method))
        if union is None or union not in unions:
            raise RuntimeError(f"schema: {table}.{method} is a union whose members are unknown")
        return Field(name, slot, "union", union=unions[union])
    if "self._tab.Vector(o)" in source:
        if "self._tab.Indirect(x)" in source and obj:
            return Field(name, slot, "vector_table", table=obj.group(1))
        if scalar and scalar.group(2) == "a":
            fmt, size = _FORMATS[scalar.group(1)]
            return Field(name, slot, "vector", fmt=fmt, size=size)
    elif "self._tab.String(o + self._tab.Pos)" in source:
        return Field(name, slot, "string")
    elif "self._tab.Indirect(o + self._tab.Pos)" in source and obj:
        return Field(name, slot, "table", table=obj.group(1))
    elif scalar and scalar.group(2) == "o":
        fmt, size = _FORMATS[scalar.group(1)]
        return Field(name, slot, "scalar", fmt=fmt, size=size)
    raise RuntimeError(f"schema: cannot tell how {table}.{method} reads its field")


class _Walk:
    def __init__(self, data: bytes, where: str, visit: Callable[[Site], None] | None, build: bool):
        self.data = data
        self.n = min(len(data), MAX_BUFFER_SIZE)
        self.where = where
        self.visit = visit
        self.build = build
        self.tables = schema_tables()
        self.classes = _object_classes() if build else {}
        self.table_count = 0
        self.visits = 0
        self.vector_bytes = 0
        self.max_visits = int(_VISITS_PER_BYTE * self.n) + _SLACK
        self.max_vector_bytes = _VECTOR_BYTES_PER_BYTE * self.n + _SLACK

    def fail(self, path: str, what: str) -> InvalidModelFileError:
        return InvalidModelFileError(
            f"corrupted flatbuffer: {path or 'root'} {what}",
            self.where,
            "re-export the model with tfcompress.export.to_tflite or `tfcompress convert`; "
            "the file is damaged or was not written by a flatbuffers builder",
        )

    def inside(self, pos: int, size: int, path: str, what: str, align: int = 1) -> None:
        if pos < 0 or size < 0 or size > self.n or pos > self.n - size:
            raise self.fail(path, f"{what} at byte {pos} runs outside the {self.n}-byte file (truncated?)")
        if align > 1 and pos % align:
            raise self.fail(path, f"{what} at byte {pos} is not {align}-byte aligned")

    def read(self, fmt: str, pos: int):
        return struct.unpack_from(fmt, self.data, pos)[0]

    def count(self, path: str, nbytes: int = 0) -> None:
        self.visits += 1
        self.vector_bytes += nbytes
        if self.visits > self.max_visits or self.vector_bytes > self.max_vector_bytes:
            raise InvalidModelFileError(
                f"the flatbuffer points many offsets at the same data ({self.visits:,} tables, vectors "
                f"and strings holding {self.vector_bytes:,} bytes reached from a {self.n:,}-byte file, "
                f"at {path}); every reader would walk or copy it again for each offset",
                self.where,
                "re-export the model: a flatbuffers builder writes each table and vector once",
            )

    def site(self, kind: str, pos: int, fmt: str | None, path: str, name: str = "") -> None:
        if self.visit is not None:
            self.visit(Site(kind, pos, fmt, path, name))

    def offset(self, pos: int, path: str) -> int:
        """Follow the uoffset stored at ``pos`` (flatbuffers' ``Verifier::VerifyOffset``)."""
        self.inside(pos, 4, path, "offset", 4)
        value = self.read("<I", pos)
        self.site("uoffset", pos, "<I", path)
        if value == 0 or value >= 2**31:
            raise self.fail(path, f"has an invalid offset {value} at byte {pos}")
        target = pos + value
        self.inside(target, 1, path, "offset target")
        return target

    def table(self, pos: int, name: str, path: str, depth: int):
        if depth > MAX_DEPTH:
            raise self.fail(path, f"nests tables more than {MAX_DEPTH} deep")
        self.table_count += 1
        if self.table_count > MAX_TABLES:
            raise self.fail(path, f"makes the file hold more than {MAX_TABLES:,} tables")
        self.count(path)
        self.inside(pos, 4, path, f"{name} table", 4)
        data, unpack, visit = self.data, struct.unpack_from, self.visit
        if visit is not None:
            self.site("table", pos, None, path, name)
            self.site("soffset", pos, "<i", path, name)
        vtable = pos - unpack("<i", data, pos)[0]
        self.inside(vtable, 2, path, f"{name} vtable", 2)
        vsize = unpack("<H", data, vtable)[0]
        if vsize % 2:
            raise self.fail(path, f"{name} vtable at byte {vtable} has an odd size {vsize}")
        self.inside(vtable, vsize, path, f"{name} vtable", 2)
        if visit is not None:
            for slot in range(0, vsize, 2):
                self.site("vtable", vtable + slot, "<H", path, name)
        fields, type_slots = _layout(name)
        obj = self.classes[name]() if self.build else None
        n = self.n
        for f in fields:
            if f.slot >= vsize:
                break  # fields are sorted by slot: the vtable holds none of the rest
            rel = unpack("<H", data, vtable + f.slot)[0]
            if not rel:
                continue
            loc = pos + rel
            if f.kind == "scalar":
                if loc + f.size > n or loc % f.size:  # the common case without building a path
                    self.inside(loc, f.size, _join(path, f.name), "field", f.size)
                if visit is not None:
                    self.site("union_type" if f.slot in type_slots else "scalar", loc, f.fmt, _join(path, f.name))
                value = unpack(f.fmt, data, loc)[0]
            else:
                fpath = _join(path, f.name)
                target = self.offset(loc, fpath)
                if f.kind == "string":
                    value = self.string(target, fpath)
                elif f.kind == "table":
                    value = self.table(target, f.table, fpath, depth + 1)
                elif f.kind == "vector":
                    value = self.vector(target, f.size, f.fmt, fpath)
                elif f.kind == "vector_table":
                    length = self.vector(target, 4, None, fpath)
                    value = []
                    for i in range(length):
                        element = target + 4 + 4 * i
                        epath = f"{fpath}[{i}]"
                        if visit is not None:
                            self.site("uoffset", element, "<I", epath)
                        value.append(self.table(element + unpack("<I", data, element)[0], f.table, epath, depth + 1))
                else:  # union: its type field has a lower slot, so it was read already if present
                    type_rel = unpack("<H", data, vtable + f.type_slot)[0] if f.type_slot < vsize else 0
                    kind = data[pos + type_rel] if type_rel else 0
                    member = f.members.get(kind)
                    # NONE and unknown types are not followed (as in C++); the object API gives None
                    value = self.table(target, member, fpath, depth + 1) if member else None
            if obj is not None:
                setattr(obj, f.attr, value)
        return obj

    def vector(self, pos: int, size: int, fmt: str | None, path: str):
        self.inside(pos, 4, path, "vector length", 4)
        length = self.read("<I", pos)
        self.site("length", pos, "<I", path)
        if length >= MAX_BUFFER_SIZE // size:
            raise self.fail(path, f"declares {length:,} elements")
        self.inside(pos + 4, size * length, path, f"vector of {length:,} elements")
        self.count(path, 4 + size * length)
        if fmt is None:
            return length
        if self.visit is not None:
            # every element of a short vector, a few of a long one (weight data)
            step = max(1, length // 16)
            for i in range(0, length, step):
                self.site("scalar", pos + 4 + size * i, fmt, f"{path}[{i}]")
        if self.build:  # a read-only view of the file, as the object API's ...AsNumpy() gives
            return np.frombuffer(self.data, dtype=np.dtype(fmt), count=length, offset=pos + 4)
        return None

    def string(self, pos: int, path: str):
        self.inside(pos, 4, path, "string length", 4)
        length = self.read("<I", pos)
        self.site("length", pos, "<I", path)
        self.inside(pos + 4, length + 1, path, f"string of {length:,} bytes")
        if self.data[pos + 4 + length] != 0:
            raise self.fail(path, "string does not end with a NUL byte")
        self.count(path, 4 + length)
        return bytes(self.data[pos + 4 : pos + 4 + length]) if self.build else None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@cache
def _layout(name: str) -> tuple[tuple[Field, ...], frozenset[int]]:
    fields = schema_tables()[name]
    return fields, frozenset(f.type_slot for f in fields if f.kind == "union")


@cache
def _object_classes() -> dict[str, type]:
    module = _schema_module()
    return {name: getattr(module, f"{name}T") for name in schema_tables()}


def read_flatbuffer(data: bytes, where: str = "<bytes>", identifier: bytes = b"TFL3"):
    """Verify ``data`` (as `verify_flatbuffer`) and read it in the same pass.

    Returns the model as the schema's object API reads it (a ``schema_py_generated.ModelT``:
    the same classes, attribute names and defaults; vectors of numbers are read-only NumPy
    views of ``data``), without reading the file a second time. ``data`` must be ``bytes``.

    Raises:
        InvalidModelFileError: as `verify_flatbuffer`.

    Example:
        >>> import keras
        >>> from tfcompress.export import to_tflite
        >>> _ = to_tflite(keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]), "model.tflite", quantization=None)
        >>> data = open("model.tflite", "rb").read()
        >>> model_t = read_flatbuffer(data, "model.tflite")
        >>> type(model_t).__name__, len(model_t.subgraphs), [t.shape.tolist() for t in model_t.subgraphs[0].tensors][:1]
        ('ModelT', 1, [[1, 8]])
        >>> read_flatbuffer(data[:100], "cut.tflite")
        Traceback (most recent call last):
        ...
        tfcompress.errors.InvalidModelFileError: cut.tflite: ...
    """
    walk = _Walk(bytes(data), where, None, build=True)
    if walk.n < 8 or data[4:8] != identifier:
        raise walk.fail("", f"lacks the {identifier.decode()!r} file identifier")
    return walk.table(walk.offset(0, ""), ROOT_TABLE, "", 1)


def verify_flatbuffer(data: bytes, where: str = "<bytes>", identifier: bytes = b"TFL3",
                      visit: Callable[[Site], None] | None = None) -> None:
    """Check ``data`` as flatbuffers' C++ ``Verifier`` checks a TFLite model, plus the aliasing limits.

    Args:
        data: the whole file.
        where: the file's name, for the error.
        identifier: the 4-byte file identifier expected at byte 4.
        visit: called with every `Site` read, in file-walk order (for tools that need to know
            what each byte is; the verifier itself does not need it).

    Raises:
        InvalidModelFileError: saying which field (``subgraphs[0].tensors[3].shape``) is broken
            and how.

    Example:
        >>> import flatbuffers
        >>> from ai_edge_litert import schema_py_generated as schema
        >>> builder = flatbuffers.Builder(64)
        >>> model = schema.ModelT()
        >>> model.version = 3
        >>> _ = builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        >>> data = bytes(builder.Output())
        >>> verify_flatbuffer(data)
        >>> try:
        ...     verify_flatbuffer(data[:-2])
        ... except InvalidModelFileError as error:
        ...     print("rejected")
        rejected
    """
    walk = _Walk(data, where, visit, build=False)
    if walk.n < 8 or data[4:8] != identifier:
        raise walk.fail("", f"lacks the {identifier.decode()!r} file identifier")
    walk.table(walk.offset(0, ""), ROOT_TABLE, "", 1)
