"""c2pa-rs's data-hashed signing: shipped in c2pa-python's native library, not wrapped by it.

Why: `Builder.sign(signer, format, source, dest)` hands c2pa-rs the image through Python stream
callbacks (about 1,100 reads, seeks and writes for a 2 MB PNG, each a trip through ctypes and
the GIL), c2pa-rs hashes it, rewrites the file and writes it back through more callbacks. The
data-hashed path lets imagegate do the byte work once, in C: imagegate knows the manifest
store's size (learned per definition length, else sized by c2pa-rs's
`c2pa_builder_data_hashed_placeholder`; see `DataHashedSigning.sign`), hashes the image with the
container excluded and inserts it (`provenance.containers`), and c2pa-rs signs the claim over
that hash (`c2pa_builder_sign_data_hashed_embeddable`, no asset stream). What is signed is the
same: the same assertions, the same `c2pa.hash.data` hard binding (SHA-256, the manifest's
container excluded), the same COSE signature by the same Signer.

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

import ctypes
import io
import json
from collections.abc import Callable, Sequence
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

_STORE_FORMAT = MANIFEST_STORE_MEDIA_TYPE.encode("ascii")
_I64_MAX = 2**63 - 1  # the most c2pa-rs takes from JSON; 9 CBOR bytes, as many as any offset
#: The hard binding as it goes into the definition: room for one exclusion range of any start
#: and length, and for a SHA-256 digest (33 small integers encode to 35 CBOR bytes, the 32-byte
#: digest to 34). c2pa-rs replaces it with the real one, padded to the reserved size. (c2pa-rs's
#: own placeholder reserves ten exclusion ranges: about 100 bytes more in every manifest.)
RESERVED_DATA_HASH: dict[str, Any] = {
    "label": "c2pa.hash.data",
    "data": {
        "name": "jumbf manifest",
        "alg": "sha256",
        "exclusions": [{"start": _I64_MAX, "length": _I64_MAX}],
        "hash": [0] * 33,
        "pad": [],
    },
}
#: Learned store sizes kept at most (then forgotten all at once and learned again).
_MAX_LEARNED_SIZES = 1024


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
        #: (signature reserve, definition JSON length) -> manifest store size; see `sign`.
        self._store_sizes: dict[tuple[int, int], int] = {}
        #: How many stores c2pa-rs sized first, and how many learned sizes were wrong (each cost
        #: a second signature). Diagnostics: counted without a lock, so roughly under threads.
        self.placeholders_sized = 0
        self.sizes_relearned = 0

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
        *,
        exact_size: bool = True,
    ) -> bytes:
        """Sign `definition` (with `ingredients`) over the hash `data_hash_for(store_size)` returns.

        Blocking. With `exact_size` (a store to embed), the store comes back exactly
        `store_size` bytes long, so the container placed for that size fits; without it (a
        sidecar, whose hash excludes nothing) the size is whatever c2pa-rs makes it and
        `data_hash_for` gets 0. Raises `c2pa.C2paError`.

        The definition gets a reserved `c2pa.hash.data` assertion (`RESERVED_DATA_HASH`) that c2pa-rs
        pads the real one to, so a definition's store size does not depend on the hash or the
        exclusion it signs. That size is learned per definition length: the first definition of
        a length is sized by c2pa-rs's placeholder (a whole dummy store), the next ones are
        signed straight away. If the learned size turns out wrong for this definition (the same
        JSON length can encode to a different CBOR length), it is signed again with the size it
        really has: a wrong guess costs time, never a wrong binding.
        """
        definition = {
            **definition,
            "format": MANIFEST_STORE_MEDIA_TYPE,
            "assertions": [*definition.get("assertions", ()), RESERVED_DATA_HASH],
        }
        definition_json = json.dumps(definition).encode("utf-8")
        # Ingredients carry whole manifests of their own: their definitions are not worth learning.
        key = (reserve_size, len(definition_json)) if exact_size and not ingredients else None
        size = self._store_sizes.get(key) if key is not None else None
        builder = self._new_builder(context, definition_json)
        try:
            for ingredient in ingredients:
                self._add(builder, ingredient)
            if size is None and exact_size:
                placeholder = ctypes.c_void_p()
                size = self._placeholder(
                    builder, reserve_size, _STORE_FORMAT, ctypes.byref(placeholder)
                )
                self._take(placeholder, size, "the manifest store could not be sized")
                self.placeholders_sized += 1
            store = self._sign_builder(builder, signer, data_hash_for(size or 0))
            if exact_size and len(store) != size:
                size = len(store)  # a learned size that does not fit this definition
                self.sizes_relearned += 1
                store = self._sign_builder(builder, signer, data_hash_for(size))
        finally:
            self._free(builder)
        if exact_size and len(store) != size:
            raise c2pa.C2paError(
                f"Other: the signed manifest store is {len(store)} bytes, {size} were reserved"
            )
        if key is not None:
            if len(self._store_sizes) >= _MAX_LEARNED_SIZES:
                self._store_sizes.clear()
            self._store_sizes[key] = len(store)
        return store

    def _sign_builder(self, builder: int, signer: c2pa.Signer, data_hash: dict[str, Any]) -> bytes:
        """c2pa-rs signs the builder's claim over `data_hash` (callable again on the same builder)."""
        data_hash_json = json.dumps(data_hash).encode("ascii")
        store = ctypes.c_void_p()
        with signer._native_call():  # reserved for a shared call, as Builder.sign does
            handle = signer._handle
            if not handle:
                raise c2pa.C2paError("Other: the signer is closed")
            size = self._sign(builder, handle, data_hash_json, _STORE_FORMAT, None, ctypes.byref(store))
        return self._take(store, size, "signing failed")

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


def _bind(library: ctypes.CDLL, name: str, argtypes: list[Any], restype: Any) -> Any:
    function = getattr(library, name)
    function.argtypes = argtypes
    function.restype = restype
    return function
