"""How checkpoint values are stored: a LangGraph serializer with optional compression and encryption at rest,
that only ever rebuilds safe types. The savers are built with it by `savers.open_saver(url, options=...)`, which
takes the database's own salt from its keyring (savers.keyring).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import hmac
import logging
import os
import threading
import unicodedata
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from savers.errors import StorageError
from savers.options import COMPRESSIONS, ENV_KEY, SaverOptions

__all__ = ["EncryptionError", "Serializer", "Cipher", "make_serde", "serde_from_env", "COMPRESSIONS", "MIN_PASSPHRASE_CHARS"]

# Smaller values are stored as they are: compressing them saves a few bytes at best, and a value of the
# exact msgpack type stays eligible for the savers' list deltas (savers.compact).
COMPRESS_MIN_BYTES = 512
ZSTD_LEVEL, GZIP_LEVEL = 3, 6
# A stored value that claims to decompress to more than this is refused, not allocated.
MAX_VALUE_BYTES = 256 << 20

AESGCM_TAG = "aesgcm"
MIN_PASSPHRASE_CHARS = 16
# Used when the caller has no per-database salt. A database's own random salt is better (see make_serde).
DEFAULT_SALT = b"agent.savers.serde/v1"
# scrypt: 32 MiB and about 0.1 s, paid once per process and key (the derived key is cached).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
# An encrypted value: format byte, key id, nonce, then AES-256-GCM ciphertext with its 16-byte tag.
FORMAT_V1 = 1
KEY_ID_BYTES, NONCE_BYTES, TAG_BYTES = 4, 12, 16
_HEADER_BYTES = 1 + KEY_ID_BYTES



class EncryptionError(StorageError):
    """Stored values cannot be encrypted or decrypted as configured: no key, the wrong key, a key too short,
    a value altered in the database, or a plaintext value where encryption is on."""


# -- compression -------------------------------------------------------------------------------------------


def _too_large(codec: str) -> StorageError:
    return StorageError(f"a stored {codec} value would decompress to more than {MAX_VALUE_BYTES >> 20} MiB; "
                        "refusing to load it (the database row was altered or is corrupt)")


def _corrupt(codec: str, exc: Exception) -> StorageError:
    return StorageError(f"a stored {codec} value cannot be decompressed ({exc}): the database row is corrupt")


_zstd_contexts = threading.local()


def _zstd() -> tuple[Any, Any]:
    """This thread's zstd (compressor, decompressor): making them costs 5x compressing a value, and zstandard's
    contexts must not be shared between threads (the savers encode outside their lock)."""
    contexts = getattr(_zstd_contexts, "pair", None)
    if contexts is None:
        import zstandard

        contexts = _zstd_contexts.pair = (zstandard.ZstdCompressor(level=ZSTD_LEVEL), zstandard.ZstdDecompressor())
    return contexts


def _zstd_compress(data: bytes) -> bytes:
    return _zstd()[0].compress(data)


def _zstd_decompress(data: bytes) -> bytes:
    import zstandard

    try:
        if zstandard.frame_content_size(data) > MAX_VALUE_BYTES:
            raise _too_large("zstd")
        # max_output_size bounds frames that do not declare their size.
        return _zstd()[1].decompress(data, max_output_size=MAX_VALUE_BYTES)
    except zstandard.ZstdError as exc:
        raise _corrupt("zstd", exc) from None


def _gzip_compress(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def _gzip_decompress(data: bytes) -> bytes:
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        out = inflate.decompress(data, MAX_VALUE_BYTES)
    except zlib.error as exc:
        raise _corrupt("gzip", exc) from None
    if inflate.unconsumed_tail:
        raise _too_large("gzip")
    if not inflate.eof:
        raise _corrupt("gzip", ValueError("truncated"))
    return out


_COMPRESS: dict[str, Callable[[bytes], bytes]] = {"zstd": _zstd_compress, "gzip": _gzip_compress}
_DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {"zstd": _zstd_decompress, "gzip": _gzip_decompress}


# -- encryption --------------------------------------------------------------------------------------------


def _no_key() -> EncryptionError:
    return EncryptionError(f"the database holds encrypted values and no key is set: set {ENV_KEY} to the "
                           "passphrase it was written with")


def _wrong_key() -> EncryptionError:
    return EncryptionError(f"{ENV_KEY} is not the key this database was written with (a stored value was "
                           "encrypted with another key): set it to that passphrase")


def _plaintext_refused() -> EncryptionError:
    return EncryptionError(f"a stored value is not encrypted, but {ENV_KEY} is set, so plaintext values are "
                           f"refused: it was written without encryption (or put there by someone else). Open "
                           f"this database without {ENV_KEY}, or copy its threads into one opened with the key")


def _altered() -> EncryptionError:
    return EncryptionError("a stored value failed its integrity check: the database row was altered, is "
                           "corrupt, or was copied from another row (the key is right); restore it from a backup")


def check_passphrase(passphrase: str) -> str:
    """The passphrase in one Unicode form (the same typed anywhere gives the same key), or an error."""
    passphrase = unicodedata.normalize("NFC", passphrase)
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise EncryptionError(
            f"{ENV_KEY} is too short ({len(passphrase)} characters): use a passphrase of at least "
            f"{MIN_PASSPHRASE_CHARS}, e.g. the output of python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return passphrase


@functools.lru_cache(maxsize=8)
def _derive(passphrase: str, salt: bytes) -> tuple[bytes, bytes]:
    """(AES-256 key, key id): scrypt stretches the passphrase; the two are separated by HMAC labels so that
    the key id, stored in every value, says nothing about the key."""
    master = hashlib.scrypt(passphrase.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=2 * 128 * SCRYPT_R * SCRYPT_N, dklen=32)
    key = hmac.new(master, b"agent aes-256-gcm key", hashlib.sha256).digest()
    key_id = hmac.new(master, b"agent key id", hashlib.sha256).digest()[:KEY_ID_BYTES]
    return key, key_id


class Cipher:
    """AES-256-GCM with a random 96-bit nonce per value. The associated data binds the header, the inner type
    tag and the value's context - where it is stored (thread, namespace, checkpoint, channel or task) - so
    none can be swapped, and a value copied to another row fails its check."""

    def __init__(self, passphrase: str, salt: bytes = DEFAULT_SALT) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise EncryptionError("encryption at rest needs the 'cryptography' package: pip install cryptography") \
                from None
        key, key_id = _derive(check_passphrase(passphrase), bytes(salt))
        self._aead = AESGCM(key)
        self._header = bytes([FORMAT_V1]) + key_id

    def _aad(self, type_: str, context: bytes) -> bytes:
        return self._header + type_.encode() + (b"\x00" + context if context else b"")

    def encrypt(self, type_: str, data: bytes, context: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return self._header + nonce + self._aead.encrypt(nonce, data, self._aad(type_, context))

    def decrypt(self, type_: str, blob: bytes, context: bytes = b"") -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(blob) < _HEADER_BYTES + NONCE_BYTES + TAG_BYTES or blob[0] != FORMAT_V1:
            raise EncryptionError("a stored encrypted value is not in a format this version reads: it was altered, "
                                  "or written by a newer version of agent")
        header, nonce, sealed = blob[:_HEADER_BYTES], blob[_HEADER_BYTES:_HEADER_BYTES + NONCE_BYTES], \
            blob[_HEADER_BYTES + NONCE_BYTES:]
        if header != self._header:
            raise _wrong_key()
        try:
            return self._aead.decrypt(nonce, sealed, self._aad(type_, context))
        except InvalidTag:
            raise _altered() from None


# -- strict loading ----------------------------------------------------------------------------------------

_watch = threading.local()
_listening = False
_listen_lock = threading.Lock()


def _on_serde_event(event: dict) -> None:
    if getattr(_watch, "blocked", None) is not None and "blocked" in event.get("kind", ""):
        _watch.blocked.append(f"{event.get('module')}.{event.get('name')}")


class _ReportedByUs(logging.Filter):
    """Drops LangGraph's warning about a blocked type while we load a value: we refuse it with our own error,
    so a person at a terminal sees one line, not a warning and then the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(_watch, "blocked", None) is None or not str(record.msg).startswith("Blocked deserialization")


def strict_loads(serde: SerializerProtocol, type_: str, data: bytes) -> tuple[Any, list[str]]:
    """Load a value; also say which types it named that strict mode refused to build (LangGraph downgrades
    those to plain data with a warning and an event; we listen for the event)."""
    global _listening
    if not _listening:
        with _listen_lock:
            if not _listening:
                from langgraph.checkpoint.serde.event_hooks import register_serde_event_listener

                register_serde_event_listener(_on_serde_event)
                logging.getLogger("langgraph.checkpoint.serde.jsonplus").addFilter(_ReportedByUs())
                _listening = True
    outer, _watch.blocked = getattr(_watch, "blocked", None), []
    try:
        return serde.loads_typed((type_, data)), _watch.blocked
    finally:
        _watch.blocked = outer


# What the inner serializer writes for our values: msgpack, and its special cases for None and bytes. JSON
# ("json": LangChain's constructor format) and pickle are never loaded, whatever a row says.
LOADED_TYPES = ("msgpack", "null", "bytes", "bytearray")


class BlockedType(StorageError):
    """A stored value names a type that is never rebuilt from storage (only LangGraph's safe types are)."""


# -- the serializer ----------------------------------------------------------------------------------------


def safe_inner() -> JsonPlusSerializer:
    """LangGraph's serializer in strict mode: msgpack rebuilds only LangGraph's safe types (what our graph
    stores is plain dicts, lists, strings and numbers; a budget pause stores langgraph.types.Interrupt, which
    is among them; an error is stored as its repr string). Any other type comes back as its raw data, never
    imported or called. No pickle, and JSON constructors only for the same safe types."""
    return JsonPlusSerializer(allowed_msgpack_modules=None, pickle_fallback=False)


class Serializer(SerializerProtocol):
    """The inner serializer's bytes, then compressed (above COMPRESS_MIN_BYTES, when that saves bytes), then
    encrypted; each step appends its tag to the type ("msgpack+zstd+aesgcm"), so reading needs no settings:
    values written under any compression load under any other, or none. With a cipher, every value is
    encrypted (None too) and a value without the encryption tag is refused."""

    def __init__(self, inner: SerializerProtocol | None = None, *, compression: str | None = None,
                 cipher: Cipher | None = None, compress_min_bytes: int = COMPRESS_MIN_BYTES) -> None:
        if compression is not None and compression not in COMPRESSIONS:
            raise StorageError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}, or none")
        self.inner = inner if inner is not None else safe_inner()
        self.compression = compression
        self.cipher = cipher
        self.compress_min_bytes = compress_min_bytes

    @property
    def encrypted(self) -> bool:
        return self.cipher is not None

    def with_msgpack_allowlist(self, extra_allowlist) -> Serializer:
        """What LangGraph asks of a serializer under LANGGRAPH_STRICT_MSGPACK: the same, also allowing the
        graph's own schema types (ours has none beyond plain data, so this is usually itself)."""
        inner = self.inner.with_msgpack_allowlist(extra_allowlist) if hasattr(
            self.inner, "with_msgpack_allowlist") else self.inner
        if inner is self.inner:
            return self
        return Serializer(inner, compression=self.compression, cipher=self.cipher,
                          compress_min_bytes=self.compress_min_bytes)

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return self.seal(*self.inner.dumps_typed(obj))

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        """The value; a value naming a type strict mode will not build is refused (BlockedType), never
        handed on as a look-alike of plain data - and nothing it names is imported or called."""
        return self.load_inner(*self.unseal(*data))

    def load_inner(self, type_: str, data: bytes) -> Any:
        """loads_typed of an unsealed value (the inner serializer's type and bytes)."""
        if type_ not in LOADED_TYPES:
            raise BlockedType(f"a stored value has type {type_!r}, which is never loaded from storage (only "
                              f"{', '.join(LOADED_TYPES)}): the row was crafted or written by other code")
        value, blocked = strict_loads(self.inner, type_, data)
        if blocked:
            raise BlockedType(f"a stored value names types that are never loaded from storage "
                              f"({', '.join(sorted(set(blocked)))}): the row was crafted or written by other "
                              "code; it was not loaded")
        return value

    def seal(self, type_: str, data: bytes, context: bytes = b"") -> tuple[str, bytes]:
        """Compress and encrypt bytes the inner serializer made (for savers that encode values themselves);
        `context` names where the value is stored, and only unseals there."""
        if self.compression is not None and len(data) >= self.compress_min_bytes:
            packed = _COMPRESS[self.compression](data)
            if len(packed) < len(data):
                type_, data = f"{type_}+{self.compression}", packed
        if self.cipher is not None:
            data = self.cipher.encrypt(type_, data, context)
            type_ = f"{type_}+{AESGCM_TAG}"
        return type_, data

    def unseal(self, type_: str, data: bytes, context: bytes = b"") -> tuple[str, bytes]:
        """The inner serializer's (type, bytes) of a stored value: decrypted and decompressed as its tags say."""
        inner, plus, last = type_.rpartition("+")
        if plus and last == AESGCM_TAG:
            if self.cipher is None:
                raise _no_key()
            type_, data = inner, self.cipher.decrypt(inner, bytes(data), context)
            inner, plus, last = type_.rpartition("+")
        elif self.cipher is not None:
            raise _plaintext_refused()
        if plus and last in _DECOMPRESS:
            type_, data = inner, _DECOMPRESS[last](bytes(data))
        return type_, data


def make_serde(*, compression: str | None = None, encryption_key: str | None = None,
               salt: bytes | None = None) -> Serializer:
    """A serializer for the savers. `compression`: "zstd", "gzip" or None; `encryption_key`: a passphrase of at
    least 16 characters (None: no encryption). `salt`: the database's own random salt, which the saver keeps
    in the database and passes here; without one, DEFAULT_SALT (the same passphrase then gives the same key
    in every database). A value written with another salt reads as written with another key."""
    cipher = Cipher(encryption_key, DEFAULT_SALT if salt is None else salt) if encryption_key is not None else None
    return Serializer(compression=compression, cipher=cipher)


def serde_from_env(environ: Mapping[str, str] | None = None, *, salt: bytes | None = None) -> Serializer:
    """make_serde from AGENT_COMPRESSION and AGENT_ENCRYPTION_KEY, read as the savers read them
    (savers.options.SaverOptions.from_env: set-but-empty key is an error, not "no encryption")."""
    options = SaverOptions.from_env(environ)
    return make_serde(compression=options.compression, encryption_key=options.encryption_key, salt=salt)


def saver_with_allowlist(saver, extra_allowlist):
    """BaseCheckpointSaver.with_allowlist for our savers, whose serializer LangGraph does not know."""
    import copy

    serde = saver.serde.with_msgpack_allowlist(extra_allowlist)
    if serde is saver.serde:
        return saver
    clone = copy.copy(saver)
    clone.serde = serde
    return clone
