"""c2pa-rs's data-hashed signing: shipped in c2pa-python's native library, not wrapped by it.

Why: `Builder.sign(signer, format, source, dest)` hands c2pa-rs the image through Python stream
callbacks (about 1,100 reads, seeks and writes for a 2 MB PNG, each a trip through ctypes and
the GIL), c2pa-rs hashes it, rewrites the file and writes it back through more callbacks. The
data-hashed path lets imagegate do the byte work once, in C: c2pa-rs sizes the manifest store
(`c2pa_builder_data_hashed_placeholder`), imagegate hashes the image with the container excluded
and inserts it (`provenance.containers`), and c2pa-rs signs the claim over that hash
(`c2pa_builder_sign_data_hashed_embeddable`, no asset stream). What is signed is the same: the
same assertions, the same `c2pa.hash.data` hard binding (SHA-256, the manifest's container
excluded), the same COSE signature by the same Signer.

This is the only module that reaches past c2pa-python's public API. It calls the library c2pa
already loaded, with c2pa-python's own `Context` (`execution_context`, public) and `Signer`
(`_handle`, guarded by its `_native_call()` reservation as `Builder.sign` does). Checked with
c2pa-python 0.38.1 / c2pa-rs 0.91.3. `DataHashedSigning.load()` returns None when the installed
c2pa lacks any of it; `ManifestSigner` then signs through `Builder.sign`. Each call makes its own
native Builder and frees it, so one `DataHashedSigning` serves many threads; the GIL is released
during the native calls (ctypes), except while a callback Signer (KMS, HSM) runs its Python code.

This module must never log key material or image bytes, and never keep a native Builder alive
after the call that made it.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import c2pa

from provenance.containers import MANIFEST_STORE_MEDIA_TYPE
from provenance.manifest import PlannedIngredient

_SYMBOLS = (
    "c2pa_builder_from_context",
    "c2pa_builder_with_definition",
    "c2pa_builder_add_ingredient_from_stream",
    "c2pa_builder_data_hashed_placeholder",
    "c2pa_builder_sign_data_hashed_embeddable",
    "c2pa_error",
    "c2pa_free",
)

#: Given the manifest store's size, the data hash to sign: {"exclusions": [...], "hash": [...]}
DataHashFor = Callable[[int], dict[str, Any]]


class DataHashedSigning:
    """Signs a manifest definition over a hash imagegate computed; returns the bare store."""

    def __init__(self, library: ctypes.CDLL) -> None:
        pointer = ctypes.c_void_p
        out_bytes = ctypes.POINTER(ctypes.c_void_p)
        self._from_context = _bind(library, "c2pa_builder_from_context", [pointer], pointer)
        self._with_definition = _bind(
            library, "c2pa_builder_with_definition", [pointer, ctypes.c_char_p], pointer
        )
        self._add_ingredient = _bind(
            library,
            "c2pa_builder_add_ingredient_from_stream",
            [pointer, ctypes.c_char_p, ctypes.c_char_p, pointer],
            ctypes.c_int,
        )
        self._placeholder = _bind(
            library,
            "c2pa_builder_data_hashed_placeholder",
            [pointer, ctypes.c_size_t, ctypes.c_char_p, out_bytes],
            ctypes.c_int64,
        )
        self._sign = _bind(
            library,
            "c2pa_builder_sign_data_hashed_embeddable",
            [pointer, pointer, ctypes.c_char_p, ctypes.c_char_p, pointer, out_bytes],
            ctypes.c_int64,
        )
        self._error = _bind(library, "c2pa_error", [], pointer)
        self._free = _bind(library, "c2pa_free", [pointer], ctypes.c_int)

    @classmethod
    def load(cls) -> DataHashedSigning | None:
        """The bindings, or None when the installed c2pa-python cannot provide them."""
        module = getattr(c2pa, "c2pa", None)
        library = getattr(module, "_lib", None)
        if not isinstance(library, ctypes.CDLL):
            return None
        if not all(hasattr(library, name) for name in _SYMBOLS):
            return None
        if not hasattr(c2pa.Signer, "_native_call") or not hasattr(c2pa.Context, "execution_context"):
            return None
        try:  # an ingredient goes in through a c2pa-python Stream's native handle
            with c2pa.Stream(io.BytesIO(b"")) as probe:
                if not getattr(probe, "_stream", None):
                    return None
        except (AttributeError, TypeError, c2pa.C2paError):
            return None
        # A CDLL of our own over the same (already loaded) library: our argtypes never touch
        # the function objects c2pa-python configured.
        return cls(ctypes.CDLL(library._name))

    def sign(
        self,
        context: c2pa.Context,
        signer: c2pa.Signer,
        reserve_size: int,
        definition: dict[str, Any],
        ingredients: Sequence[PlannedIngredient],
        data_hash_for: DataHashFor,
    ) -> bytes:
        """Sign `definition` (with `ingredients`) over the hash `data_hash_for(store_size)` returns.

        Blocking. The store comes back exactly `store_size` bytes long (c2pa-rs pads it to the
        size it promised), so the container placed for that size fits. Raises `c2pa.C2paError`.
        """
        definition_json = json.dumps(definition).encode("utf-8")
        store_format = MANIFEST_STORE_MEDIA_TYPE.encode("ascii")
        builder = self._new_builder(context, definition_json)
        try:
            for ingredient in ingredients:
                self._add(builder, ingredient)
            placeholder = ctypes.c_void_p()
            size = self._placeholder(builder, reserve_size, store_format, ctypes.byref(placeholder))
            self._take(placeholder, size, "the manifest store could not be sized")
            data_hash = json.dumps(data_hash_for(size)).encode("ascii")
            store = ctypes.c_void_p()
            with _signer_handle(signer) as signer_handle:
                signed_size = self._sign(
                    builder, signer_handle, data_hash, store_format, None, ctypes.byref(store)
                )
            result = self._take(store, signed_size, "signing failed")
        finally:
            self._free(builder)
        if len(result) != size:
            raise c2pa.C2paError(
                f"Other: the signed manifest store is {len(result)} bytes, {size} were reserved"
            )
        return result

    def _new_builder(self, context: c2pa.Context, definition_json: bytes) -> int:
        empty = self._from_context(context.execution_context)
        if not empty:
            raise c2pa.C2paError(self._last_error("the C2PA builder could not be created"))
        # Consumes `empty` (whether it succeeds or not: the JSON is valid UTF-8 without NULs).
        builder = self._with_definition(empty, definition_json)
        if not builder:
            raise c2pa.C2paError(self._last_error("the manifest definition was refused"))
        return int(builder)

    def _add(self, builder: int, ingredient: PlannedIngredient) -> None:
        """Add an ingredient: c2pa-rs reads it (and any manifest it carries) from a stream."""
        ingredient_json = json.dumps(ingredient.definition).encode("utf-8")
        with c2pa.Stream(io.BytesIO(ingredient.data)) as stream:
            status = self._add_ingredient(
                builder, ingredient_json, ingredient.media_type.encode("ascii"), stream._stream
            )
        if status != 0:
            raise c2pa.C2paError(self._last_error("the ingredient could not be added"))

    def _take(self, pointer: ctypes.c_void_p, size: int, failure: str) -> bytes:
        """Copy `size` bytes the library allocated, then free them; raise on a failed call."""
        if size < 0 or not pointer:
            if pointer:
                self._free(pointer)
            raise c2pa.C2paError(self._last_error(failure))
        try:
            return ctypes.string_at(pointer, size)
        finally:
            self._free(pointer)

    def _last_error(self, fallback: str) -> str:
        message = self._error()
        if not message:
            return f"Other: {fallback}"
        try:
            text = ctypes.string_at(message).decode("utf-8", "replace")
        finally:
            self._free(message)
        return text or f"Other: {fallback}"


@contextlib.contextmanager
def _signer_handle(signer: c2pa.Signer) -> Iterator[int]:
    """The native Signer, reserved for a shared call as `Builder.sign` reserves it."""
    with signer._native_call():
        handle = signer._handle
        if not handle:
            raise c2pa.C2paError("Other: the signer is closed")
        yield handle


def _bind(library: ctypes.CDLL, name: str, argtypes: list[Any], restype: Any) -> Any:
    function = getattr(library, name)
    function.argtypes = argtypes
    function.restype = restype
    return function
