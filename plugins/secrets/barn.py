"""The ``barn`` secret backend: secrets in the Barn, envelope-encrypted (the default).

A master key (32 random bytes, in a file only its owner can read) wraps one data key per herd;
each herd's data key encrypts that herd's secrets. Only ciphertext reaches the Barn, so a Barn
snapshot or a replica's disk gives nothing without the master key file.

Barn keys (everything of a herd is under its prefix: deleting the herd deletes its secrets)::

    /herds/HERD/secrets-key       the herd's data key, wrapped: JSON {format, master_key_id,
                                  data_key_id, nonce, wrapped, created}; AES-256-GCM under the
                                  master key, the AAD binds the herd and the master key id
    /herds/HERD/secrets/NAME      the latest version: JSON {version, updated, nonce, ciphertext,
                                  data_key_id}; AES-256-GCM under the herd's data key, the AAD
                                  binds herd, name, version and data key id (ciphertext moved to
                                  another herd, name or version does not decrypt). A deleted
                                  secret leaves {version, updated, deleted: true} (no ciphertext)
                                  so the next put continues its versions.
    /cluster/secret-herds/HERD    empty: the herds that have a data key, so rotating the master
                                  key reads those keys without scanning every job and task
                                  under /herds/ (an entry outliving its herd is skipped and
                                  removed by the next rotation)

Key ids are the first 16 hex digits of the key's SHA-256. A running driver keeps the data keys
it unwrapped: rotating the master key protects what is at rest, it does not revoke a server
that already read a herd's data key.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runink.core.driverload import OptionsSchema
from runink.core.interfaces.barn import BarnBackend, KeyValue, TxnOp, herd_key
from runink.core.interfaces.secrets import (
    InvalidSecretError,
    SecretBackend,
    SecretError,
    SecretInfo,
    check_herd,
    check_secret_name,
    check_secret_value,
    not_found,
)
from runink.core.masterkey import MASTER_KEY_BYTES, key_id, read_master_key

DATA_KEY_BYTES = 32
NONCE_BYTES = 12  # AES-GCM's standard nonce; random per encryption (fresh data keys make reuse moot)
PUT_ATTEMPTS = 30  # compare-and-set rounds a put makes against concurrent writers of the same name
ROTATE_BATCH = 500  # herd keys rewrapped per Barn transaction (a raft Barn caps one at 4,096 operations)
HERD_INDEX = "/cluster/secret-herds/"
RECORD_FORMAT = 1


def _check_master_key(key: object, what: str) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != MASTER_KEY_BYTES:
        size = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
        raise InvalidSecretError(f"barn secrets: {what} must be {MASTER_KEY_BYTES} bytes, got {size}")
    return bytes(key)


def _data_key_aad(herd: str, master_key_id: str) -> bytes:
    return f"runink secrets data key\0{herd}\0{master_key_id}".encode()


def _value_aad(herd: str, name: str, version: int, data_key_id: str) -> bytes:
    return f"runink secret\0{herd}\0{name}\0{version}\0{data_key_id}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class _DataKey:
    id: str
    cipher: AESGCM
    mod_revision: int  # of /herds/HERD/secrets-key when read: a put compares it

    def __repr__(self) -> str:
        return f"_DataKey(id={self.id!r})"


HERD_RECORD = "herd"  # the cluster's record of a herd: /herds/NAME/herd (core/control/records.keys.herd)


class BarnSecrets(SecretBackend):
    """Herd secrets in the Barn under ``/herds/HERD/``, envelope-encrypted (see the module doc).

    Give the master key as a file (``master_key_file``: what configuration does) or as bytes
    (``master_key``), not both."""

    name: ClassVar[str] = "barn"
    options_schema: ClassVar[OptionsSchema] = {
        "barn": object,
        "master_key_file": (str, Path),
        "master_key": object,
        "herds": bool,
    }

    def __init__(
        self,
        barn: BarnBackend,
        master_key_file: str | Path | None = None,
        master_key: bytes | None = None,
        herds: bool = False,
    ) -> None:
        if not isinstance(barn, BarnBackend):
            raise InvalidSecretError(f"barn secrets: barn must be a BarnBackend, got {type(barn).__name__}")
        if (master_key_file is None) == (master_key is None):
            raise InvalidSecretError("barn secrets: give either master_key_file or master_key (one of them)")
        self.barn = barn
        if master_key_file is not None:
            self._master = read_master_key(master_key_file)
            self._source = f"the master key {master_key_file}"
        else:
            self._master = _check_master_key(master_key, "master_key")
            self._source = "the master key given"
        self._master_id = key_id(self._master)
        # ``herds``: the Barn holds the cluster's herd records (a server's): a secret is stored
        # only in a herd that exists and is not being deleted, its record's revision compared
        # in the same transaction (a put racing a herd's delete left its secret to the next
        # herd of that name)
        self.herds = bool(herds)
        self._lock = threading.Lock()
        self._data_keys: dict[str, _DataKey] = {}  # herd -> its unwrapped data key

    def __repr__(self) -> str:
        return f"BarnSecrets(barn={type(self.barn).__name__}, master_key_id={self._master_id!r})"

    @property
    def master_key_id(self) -> str:
        return self._master_id

    # --- the interface ---------------------------------------------------------------------

    def get(self, herd: str, name: str) -> bytes:
        herd, name = check_secret_name(herd, name)
        key = herd_key(herd, "secrets", name)
        kv = self.barn.get(key)
        record = {} if kv is None else _record(kv)
        if kv is None or record.get("deleted"):
            raise not_found(herd, name)
        version, data_key_id = _field(kv, record, "version", int), _field(kv, record, "data_key_id", str)
        data_key = self._cached(herd, data_key_id) or self._data_key(herd, create=False)
        if data_key is None:
            raise SecretError(
                f"secret {name!r} of herd {herd}: the herd has no data key at {herd_key(herd, 'secrets-key')}"
            )
        if data_key.id != data_key_id:
            raise SecretError(
                f"secret {name!r} of herd {herd} (version {version}, at {key}) was encrypted with data key "
                f"{data_key_id}, but herd {herd}'s data key is {data_key.id} (copied from another herd?)"
            )
        try:
            return data_key.cipher.decrypt(
                _decoded(kv, record, "nonce"),
                _decoded(kv, record, "ciphertext"),
                _value_aad(herd, name, version, data_key_id),
            )
        except InvalidTag:
            raise SecretError(
                f"secret {name!r} of herd {herd} (version {version}, at {key}) does not decrypt with the herd's "
                f"data key {data_key.id}: altered, or copied from another name or version"
            ) from None

    def put(self, herd: str, name: str, value: bytes) -> int:
        herd, name = check_secret_name(herd, name)
        value = check_secret_value(herd, name, value)
        key, wrapped_key = herd_key(herd, "secrets", name), herd_key(herd, "secrets-key")
        for attempt in range(PUT_ATTEMPTS):
            data_key = self._latest(herd) or self._data_key(herd, create=True)
            assert data_key is not None  # created if absent
            kv = self.barn.get(key)
            version = 1 if kv is None else _field(kv, _record(kv), "version", int) + 1
            nonce = os.urandom(NONCE_BYTES)
            sealed = data_key.cipher.encrypt(nonce, value, _value_aad(herd, name, version, data_key.id))
            stored = {
                "version": version,
                "updated": time.time(),
                "nonce": _b64(nonce),
                "ciphertext": _b64(sealed),
                "data_key_id": data_key.id,
            }
            # the data key's revision too: a rotation or a herd deleted meanwhile makes this put read again
            compare = [(key, 0 if kv is None else kv.mod_revision), (wrapped_key, data_key.mod_revision)]
            compare += self._herd_compare(herd)
            held, _ = self.barn.transaction(compare, [TxnOp(key, _encode(stored))])
            if held:
                return version
            self._forget(herd, data_key)
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # spread writers that keep colliding
        raise SecretError(
            f"secret {name!r} of herd {herd}: {PUT_ATTEMPTS} attempts to store a new version each lost to "
            "another writer; try again"
        )

    def delete(self, herd: str, name: str) -> bool:
        herd, name = check_secret_name(herd, name)
        key = herd_key(herd, "secrets", name)
        for _ in range(PUT_ATTEMPTS):
            kv = self.barn.get(key)
            record = {} if kv is None else _record(kv)
            if kv is None or record.get("deleted"):
                return False
            # a tombstone keeps the version, so a put after this one does not reuse a number
            tombstone = {"version": _field(kv, record, "version", int), "updated": time.time(), "deleted": True}
            if self.barn.compare_and_set(key, kv.mod_revision, _encode(tombstone)):
                return True
        raise SecretError(f"secret {name!r} of herd {herd}: kept changing while being deleted; try again")

    def list(self, herd: str) -> builtins.list[SecretInfo]:
        herd = check_herd(herd)
        prefix = herd_key(herd, "secrets") + "/"
        found: builtins.list[SecretInfo] = []
        for kv in self.barn.scan(prefix):
            record = _record(kv)
            if record.get("deleted"):
                continue
            version, updated = _field(kv, record, "version", int), _field(kv, record, "updated", float)
            found.append(SecretInfo(kv.key[len(prefix) :], version, float(updated)))
        return sorted(found, key=lambda info: info.name)

    def version(self, herd: str, name: str) -> int:
        herd, name = check_secret_name(herd, name)
        kv = self.barn.get(herd_key(herd, "secrets", name))
        record = {} if kv is None else _record(kv)
        if kv is None or record.get("deleted"):
            raise not_found(herd, name)
        return int(_field(kv, record, "version", int))

    # --- the master key -------------------------------------------------------------------

    def rotate_master_key(self, new_master_key: bytes) -> int:
        """Rewrap every herd's data key under ``new_master_key``; returns how many were rewrapped.
        From then on this driver uses the new key (other servers need it too: restart them with
        it). The data keys, hence the secrets' ciphertext, do not change.

        Every data key is read and checked first: if one is wrapped with neither key, nothing
        is written. Rewrapped keys are written in transactions of ROTATE_BATCH herds, each
        compared to what was read; if the Barn changed meanwhile (a herd created), SecretError
        says how far it got: run it again with the same new key, it skips herds already done.
        A put this driver makes while the rotation runs may fail (the herd's key changed under
        it and the driver does not hold the new master key yet): rotate in a quiet moment."""
        new_master = _check_master_key(new_master_key, "the new master key")
        new_id = key_id(new_master)
        new_cipher, old_cipher = AESGCM(new_master), AESGCM(self._master)
        writes: builtins.list[tuple[tuple[str, int], TxnOp]] = []
        foreign: builtins.list[str] = []
        for entry in self.barn.scan(HERD_INDEX):
            herd = entry.key[len(HERD_INDEX) :]
            wrapped_key = herd_key(herd, "secrets-key")
            kv = self.barn.get(wrapped_key)
            if kv is None:  # the herd was deleted: drop its entry (if the key is still absent)
                writes.append(((wrapped_key, 0), TxnOp(entry.key, None)))
                continue
            record = _record(kv)
            wrapped_with = _field(kv, record, "master_key_id", str)
            if wrapped_with == new_id:
                continue  # done by an earlier, interrupted rotation
            if wrapped_with != self._master_id:
                foreign.append(f"{herd} ({wrapped_with})")
                continue
            raw = self._unwrap(herd, kv, record, old_cipher)
            nonce = os.urandom(NONCE_BYTES)
            rewrapped = dict(record)
            rewrapped.update(
                master_key_id=new_id,
                nonce=_b64(nonce),
                wrapped=_b64(new_cipher.encrypt(nonce, raw, _data_key_aad(herd, new_id))),
            )
            writes.append(((wrapped_key, kv.mod_revision), TxnOp(wrapped_key, _encode(rewrapped))))
        if foreign:
            raise SecretError(
                f"cannot rotate: the data keys of herds {', '.join(foreign)} are wrapped with neither "
                f"{self._source} ({self._master_id}) nor the new key ({new_id}); nothing was rotated"
            )
        rewrapped_count = 0
        for start in range(0, len(writes), ROTATE_BATCH):
            batch = writes[start : start + ROTATE_BATCH]
            held, _ = self.barn.transaction([compare for compare, _ in batch], [op for _, op in batch])
            if not held:
                raise SecretError(
                    f"the Barn changed during the master key rotation after {rewrapped_count} herds were "
                    f"rewrapped under {new_id}; run the rotation again with the same new key"
                )
            rewrapped_count += sum(1 for _, op in batch if op.value is not None)
        with self._lock:
            self._master, self._master_id = new_master, new_id
            self._source = "the master key given to rotate_master_key"
            self._data_keys.clear()
        return rewrapped_count

    # --- data keys ------------------------------------------------------------------------

    def _cached(self, herd: str, data_key_id: str) -> _DataKey | None:
        with self._lock:
            data_key = self._data_keys.get(herd)
        return data_key if data_key is not None and data_key.id == data_key_id else None

    def _latest(self, herd: str) -> _DataKey | None:
        with self._lock:
            return self._data_keys.get(herd)

    def _forget(self, herd: str, data_key: _DataKey) -> None:
        with self._lock:
            if self._data_keys.get(herd) is data_key:
                del self._data_keys[herd]

    def _data_key(self, herd: str, *, create: bool) -> _DataKey | None:
        """The herd's data key as the Barn has it now; made (once, whoever races) if absent and
        ``create``."""
        wrapped_key = herd_key(herd, "secrets-key")
        for _ in range(PUT_ATTEMPTS):
            kv = self.barn.get(wrapped_key)
            if kv is None:
                if not create:
                    return None
                self._create_data_key(herd, wrapped_key)  # the loser of a race reads the winner's
                continue
            record = _record(kv)
            data_key = _DataKey(
                _field(kv, record, "data_key_id", str),
                AESGCM(self._unwrap(herd, kv, record, AESGCM(self._master))),
                kv.mod_revision,
            )
            with self._lock:
                self._data_keys[herd] = data_key
            return data_key
        raise SecretError(f"herd {herd}'s data key at {wrapped_key} keeps disappearing (is the herd being deleted?)")

    def _create_data_key(self, herd: str, wrapped_key: str) -> None:
        raw, nonce = os.urandom(DATA_KEY_BYTES), os.urandom(NONCE_BYTES)
        stored = {
            "format": RECORD_FORMAT,
            "master_key_id": self._master_id,
            "data_key_id": key_id(raw),
            "nonce": _b64(nonce),
            "wrapped": _b64(AESGCM(self._master).encrypt(nonce, raw, _data_key_aad(herd, self._master_id))),
            "created": time.time(),
        }
        self.barn.transaction(
            [(wrapped_key, 0), *self._herd_compare(herd)],
            [TxnOp(wrapped_key, _encode(stored)), TxnOp(HERD_INDEX + herd, b"")],
        )

    def _herd_compare(self, herd: str) -> builtins.list[tuple[str, int]]:
        """With ``herds``: the herd record's key and revision for a write to compare; refused
        if the herd is gone or being deleted."""
        if not self.herds:
            return []
        record_key = herd_key(herd, HERD_RECORD)
        kv = self.barn.get(record_key)
        try:
            deleting = kv is not None and bool(json.loads(kv.value).get("deleting"))
        except (ValueError, AttributeError):
            deleting = False
        if kv is None or deleting:
            why = "being deleted" if deleting else "no such herd"
            raise InvalidSecretError(f"herd {herd}: {why}: it takes no secret")
        return [(record_key, kv.mod_revision)]

    def _unwrap(self, herd: str, kv: KeyValue, record: dict[str, Any], cipher: AESGCM) -> bytes:
        wrapped_with = _field(kv, record, "master_key_id", str)
        if wrapped_with != self._master_id:
            raise SecretError(
                f"{self._source} does not open herd {herd}'s data key "
                f"(key id {self._master_id}, the key was wrapped with {wrapped_with})"
            )
        try:
            raw = cipher.decrypt(
                _decoded(kv, record, "nonce"), _decoded(kv, record, "wrapped"), _data_key_aad(herd, wrapped_with)
            )
        except InvalidTag:
            raise SecretError(
                f"herd {herd}'s data key at {kv.key} does not decrypt under {self._source} (key id "
                f"{self._master_id}): altered, or copied from another herd"
            ) from None
        if key_id(raw) != _field(kv, record, "data_key_id", str):
            raise SecretError(f"herd {herd}'s data key at {kv.key} does not match its data_key_id")
        return raw


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _record(kv: KeyValue) -> dict[str, Any]:
    """The JSON object stored at ``kv``; SecretError naming the key if it is not one."""
    try:
        record = json.loads(kv.value)
    except (ValueError, UnicodeDecodeError):
        raise SecretError(f"the Barn key {kv.key} does not hold a secrets record (not JSON)") from None
    if not isinstance(record, dict):
        raise SecretError(f"the Barn key {kv.key} does not hold a secrets record (not a JSON object)")
    return record


def _field(kv: KeyValue, record: dict[str, Any], field: str, kind: type) -> Any:
    value = record.get(field)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise SecretError(f"the secrets record at Barn key {kv.key} has no valid {field!r} ({kind.__name__})")
    return value


def _decoded(kv: KeyValue, record: dict[str, Any], field: str) -> bytes:
    try:
        return base64.b64decode(_field(kv, record, field, str), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"the secrets record at Barn key {kv.key}: {field!r} is not base64") from None
