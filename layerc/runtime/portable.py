"""Self-contained pickles of generated models.

An instance of a generated model pickles with the generated module it comes from: its source
and its weights file, as bytes, and the name of its class there (`Module.__reduce_ex__`). So a
process that has layerc installed but not the generated `.py` file (a Dask worker, a process of
a pool, another machine) unpickles it: the module is written to the per-user cache, in a folder
named by a hash of its contents, and imported under a name fixed by the same hash
(`layerc.driver.import_cached`, which `layerc run` and `layerc.load` use too), so numba's
on-disk cache beside it serves the kernels that an earlier process compiled, and each process
imports each module once. Within one process, a model unpickles as an instance of the very
class it was pickled from (`copy.deepcopy` too).

One pickle carries each module once, however many of its models' instances it holds (pickle
stores one object once). Unpickling runs the generated code, as unpickling any object may run
code: unpickle only what you trust (docs/security.md).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from . import data

# What a generated module is, once pickled: (file stem, source, weights file name or None,
# weights or None, the content hash `import_cached` names it by).
Payload = tuple[str, str, "str | None", "bytes | None", str]

_PAYLOADS: dict[str, Payload] = {}  # module name -> its payload (one object, memoised by pickle)
_MODULES: dict[str, ModuleType] = {}  # content hash -> a module of this process with it


def payload(module_name: str) -> Payload | None:
    """The payload of the generated module `module_name`, read from its files the first time;
    None when it is not a generated module (or its files are gone)."""
    found = _PAYLOADS.get(module_name)
    if found is not None:
        return found
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if module is None or file is None or not hasattr(module, "_CACHE"):
        return None
    path = Path(file)
    try:
        source = path.read_bytes().decode("utf-8")
        data_name = data.FILES.get(file)
        weights = path.with_name(data_name).read_bytes() if data_name is not None else None
    except (OSError, UnicodeDecodeError):
        return None
    key = content_key(source, weights)
    found = (path.stem, source, data_name, weights, key)
    _PAYLOADS[module_name] = found
    _MODULES.setdefault(key, module)
    return found


def content_key(source: str, weights: bytes | None) -> str:
    """The hash a generated module is cached and named by (`layerc.driver.import_cached`)."""
    digest = hashlib.sha256(source.encode("utf-8"))
    if weights is not None:
        digest.update(weights)
    return digest.hexdigest()[:20]


def new(found: Payload, qualname: str, module_name: str = "") -> Any:
    """An uninitialised instance of class `qualname` of the module `found` describes; the
    pickle's state then fills it in (`Module.__setstate__`)."""
    cls = generated_class(found, qualname, module_name)
    return cls.__new__(cls)


def generated_class(found: Payload, qualname: str, module_name: str = "") -> Any:
    """Class `qualname` of the module `found` describes: of the module `module_name` it was
    pickled from when this process has it (with those contents), else of a module of this
    process with those contents, else of the module imported from the cache (written there
    first if need be)."""
    stem, source, data_name, weights, key = found
    here = payload(module_name) if module_name in sys.modules else None
    module = sys.modules[module_name] if here is not None and here[4] == key else _MODULES.get(key)
    if module is None:
        from .. import codegen, driver  # the compiler's module writer: only when unpickling

        module = driver.import_cached(stem, codegen.Output(source, weights, data_name))
        _MODULES[key] = module
        _PAYLOADS.setdefault(module.__name__, found)
    cls: Any = module
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls


class ClassRef(NamedTuple):
    """A generated class in a pickle (a class itself pickles by its module's name, which a
    process without the generated file cannot import)."""

    found: Payload
    qualname: str
    module_name: str


def class_ref(cls: type) -> type | ClassRef:
    found = payload(cls.__module__)
    return cls if found is None else ClassRef(found, cls.__qualname__, cls.__module__)


def resolve(ref: type | ClassRef) -> type:
    return generated_class(*ref) if isinstance(ref, ClassRef) else ref
