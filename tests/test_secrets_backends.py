"""The secret backends (runink.secret_backends): one contract for barn, file and env, then what
each promises on its own: the barn driver's envelope encryption (only ciphertext in the Barn,
bound to herd, name and version; a wrong or rotated master key refused in one line), the file
driver's refusal of symlinks, and the env driver's read-only variables."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runink.core.config import load_config
from runink.core.control.records import Herd
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.errors import ConfigError, RuninkError
from runink.core.hookspecs import hookimpl
from runink.core.interfaces import SecretBackend
from runink.core.interfaces.barn import KeyValue
from runink.core.interfaces.secrets import (
    MAX_SECRET_BYTES,
    InvalidSecretError,
    SecretError,
    SecretInfo,
    SecretNotFoundError,
    SecretReadOnlyError,
)
from runink.core.masterkey import create_master_key, key_id, read_master_key
from runink.plugins.barn.memory import MemoryBarn
from runink.plugins.secrets.barn import BarnSecrets
from runink.plugins.secrets.env import EnvSecrets, variable_name
from runink.plugins.secrets.file import FileSecrets
from runink.testing import plugin_manager

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


class EnvWriter:
    """An EnvSecrets whose variables a test sets through ``store`` (the driver cannot put)."""

    def __init__(self) -> None:
        self.environ: dict[str, str] = {}
        self.driver = EnvSecrets(self.environ)

    def store(self, herd: str, name: str, value: bytes) -> None:
        self.environ[variable_name(herd, name)] = os.fsdecode(value)


@pytest.fixture
def barn() -> Iterator[MemoryBarn]:
    store = MemoryBarn()
    yield store
    store.close()


@pytest.fixture(params=["barn", "file"])
def writable(request: pytest.FixtureRequest, barn: MemoryBarn, tmp_path: Path) -> SecretBackend:
    if request.param == "barn":
        return BarnSecrets(barn, master_key=KEY)
    return FileSecrets(tmp_path / "secrets")


@pytest.fixture(params=["barn", "file", "env"])
def readable(
    request: pytest.FixtureRequest, barn: MemoryBarn, tmp_path: Path
) -> tuple[SecretBackend, Callable[[str, str, bytes], object]]:
    """A driver and a way to store a value it then reads (put, or setting a variable)."""
    if request.param == "env":
        writer = EnvWriter()
        return writer.driver, writer.store
    driver: SecretBackend = (
        BarnSecrets(barn, master_key=KEY) if request.param == "barn" else FileSecrets(tmp_path / "secrets")
    )
    return driver, driver.put


# --- the contract, every driver ---------------------------------------------------------------


def test_a_stored_value_is_read_back(readable: tuple[SecretBackend, Callable[[str, str, bytes], object]]) -> None:
    driver, store = readable
    store("risk", "db-password", b"hunter2\x00\xff")
    store("risk", "API_TOKEN", b"")
    assert driver.get("risk", "db-password") == b"hunter2\x00\xff"
    assert driver.get("risk", "API_TOKEN") == b""
    names = [info.name for info in driver.list("risk")]
    assert names == sorted(names) and len(names) == 2
    # listed names read back (env lists them as its variables spell them: DB_PASSWORD)
    assert sorted(driver.get("risk", name) for name in names) == [b"", b"hunter2\x00\xff"]


def test_another_herd_sees_nothing(readable: tuple[SecretBackend, Callable[[str, str, bytes], object]]) -> None:
    driver, store = readable
    store("risk", "token", b"risk's")
    with pytest.raises(SecretNotFoundError) as raised:
        driver.get("finance", "token")
    assert "'finance'" in str(raised.value) and "'token'" in str(raised.value)
    assert isinstance(raised.value, KeyError) and isinstance(raised.value, RuninkError)
    assert driver.list("finance") == []


def test_an_absent_secret(readable: tuple[SecretBackend, Callable[[str, str, bytes], object]]) -> None:
    driver, _ = readable
    with pytest.raises(SecretNotFoundError, match="herd 'risk' has no secret 'nope'"):
        driver.get("risk", "nope")
    with pytest.raises(SecretNotFoundError):
        driver.version("risk", "nope")


@pytest.mark.parametrize(
    ("herd", "name", "what"),
    [
        ("Risk", "token", "herd 'Risk'"),
        ("risk/../x", "token", "herd"),
        ("risk", "../etc/passwd", "secret name '../etc/passwd' in herd 'risk'"),
        ("risk", ".hidden", "secret name '.hidden'"),
        ("risk", "", "secret name ''"),
        ("risk", "a" * 129, "secret name 'aaaa"),
        ("risk", "has space", "secret name 'has space'"),
    ],
)
def test_bad_names_are_refused_in_one_line(
    readable: tuple[SecretBackend, Callable[[str, str, bytes], object]], herd: str, name: str, what: str
) -> None:
    driver, _ = readable
    with pytest.raises(InvalidSecretError) as raised:
        driver.get(herd, name)
    assert what in str(raised.value) and "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_versions_count_up_and_survive_a_delete(writable: SecretBackend) -> None:
    assert writable.put("risk", "token", b"one") == 1
    assert writable.put("risk", "token", b"two") == 2
    assert writable.put("risk", "other", b"x") == 1
    assert writable.version("risk", "token") == 2
    assert writable.get("risk", "token") == b"two"
    assert writable.delete("risk", "token") is True
    assert writable.delete("risk", "token") is False
    with pytest.raises(SecretNotFoundError):
        writable.get("risk", "token")
    assert [info.name for info in writable.list("risk")] == ["other"]
    # recreated: version 3, never a second value under version 1 or 2
    assert writable.put("risk", "token", b"three") == 3
    assert writable.get("risk", "token") == b"three"


def test_list_gives_names_and_versions_never_values(writable: SecretBackend) -> None:
    writable.put("risk", "b", b"value-of-b")
    writable.put("risk", "a", b"value-of-a")
    writable.put("risk", "a", b"value-of-a-2")
    listed = writable.list("risk")
    assert [(info.name, info.version) for info in listed] == [("a", 2), ("b", 1)]
    assert all(isinstance(info, SecretInfo) and info.updated > 1e9 for info in listed)
    assert "value-of" not in repr(listed)


def test_values_are_bytes_of_at_most_64_kib(writable: SecretBackend) -> None:
    assert writable.put("risk", "big", b"x" * MAX_SECRET_BYTES) == 1
    assert len(writable.get("risk", "big")) == MAX_SECRET_BYTES
    with pytest.raises(InvalidSecretError, match=r"secret 'big' in herd 'risk': the value is 65537 bytes"):
        writable.put("risk", "big", b"x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(InvalidSecretError, match="must be bytes, got str") as raised:
        writable.put("risk", "text", "sekrit")  # type: ignore[arg-type]
    assert "sekrit" not in str(raised.value)


def test_drivers_load_by_name(barn: MemoryBarn, tmp_path: Path) -> None:
    assert isinstance(load_driver(SecretBackend, "barn", {"barn": barn, "master_key": KEY}), BarnSecrets)
    assert isinstance(load_driver(SecretBackend, "file", {"directory": str(tmp_path / "s")}), FileSecrets)
    assert isinstance(load_driver(SecretBackend, "env", {}), EnvSecrets)


# --- barn: envelope encryption -----------------------------------------------------------------


def test_the_barn_holds_only_ciphertext(barn: MemoryBarn) -> None:
    secrets = BarnSecrets(barn, master_key=KEY)
    plaintexts = [os.urandom(48), b"correct horse battery staple " * 4]
    for index, value in enumerate(plaintexts):
        secrets.put("risk", f"s{index}", value)
        secrets.put("finance", f"s{index}", value)
    stored = barn.scan("")
    assert {kv.key for kv in stored} >= {
        "/herds/risk/secrets-key",
        "/herds/risk/secrets/s0",
        "/cluster/secret-herds/risk",
    }
    for value in plaintexts:
        for needle in (value[:16], value[-16:], base64.b64encode(value)[:16], KEY[:16], base64.b64encode(KEY)[:16]):
            assert not any(needle in kv.value for kv in stored), needle
    assert "correct horse" not in repr(secrets) and repr(KEY) not in repr(secrets)
    # the same value twice is two different ciphertexts (fresh nonces, one data key per herd)
    risk = json.loads(barn.get("/herds/risk/secrets/s1").value)  # type: ignore[union-attr]
    finance = json.loads(barn.get("/herds/finance/secrets/s1").value)  # type: ignore[union-attr]
    assert risk["ciphertext"] != finance["ciphertext"] and risk["data_key_id"] != finance["data_key_id"]


@pytest.mark.parametrize(("herd", "name"), [("finance", "token"), ("risk", "other")])
def test_ciphertext_moved_elsewhere_does_not_decrypt(barn: MemoryBarn, herd: str, name: str) -> None:
    secrets = BarnSecrets(barn, master_key=KEY)
    secrets.put("risk", "token", b"risk's token")
    secrets.put("finance", "token", b"finance's")
    secrets.put("risk", "other", b"other")
    barn.put(f"/herds/{herd}/secrets/{name}", barn.get("/herds/risk/secrets/token").value)  # type: ignore[union-attr]
    with pytest.raises(SecretError) as raised:
        secrets.get(herd, name)
    message = str(raised.value)
    assert f"secret {name!r} of herd {herd}" in message and "\n" not in message
    assert "copied from another" in message
    assert secrets.get("risk", "token") == b"risk's token"


def test_an_older_version_moved_up_does_not_decrypt(barn: MemoryBarn) -> None:
    secrets = BarnSecrets(barn, master_key=KEY)
    secrets.put("risk", "token", b"old")
    old = json.loads(barn.get("/herds/risk/secrets/token").value)  # type: ignore[union-attr]
    secrets.put("risk", "token", b"new")
    old["version"] = 2  # the old ciphertext passed off as version 2
    barn.put("/herds/risk/secrets/token", json.dumps(old).encode())
    with pytest.raises(SecretError, match=r"version 2.*does not decrypt"):
        secrets.get("risk", "token")


def test_a_wrong_master_key_is_one_clear_line(barn: MemoryBarn, tmp_path: Path) -> None:
    BarnSecrets(barn, master_key=KEY).put("risk", "token", b"v")
    key_file = tmp_path / "master.key"
    other_id = create_master_key(key_file)
    wrong = BarnSecrets(barn, master_key_file=key_file)
    with pytest.raises(SecretError) as raised:
        wrong.get("risk", "token")
    assert str(raised.value) == (
        f"the master key {key_file} does not open herd risk's data key "
        f"(key id {other_id}, the key was wrapped with {key_id(KEY)})"
    )
    with pytest.raises(SecretError, match="does not open herd risk's data key"):
        wrong.put("risk", "token", b"w")
    assert raised.value.__context__ is None  # no cryptography traceback chained to it


def test_a_tampered_data_key_is_one_clear_line(barn: MemoryBarn) -> None:
    BarnSecrets(barn, master_key=KEY).put("risk", "token", b"v")
    record = json.loads(barn.get("/herds/risk/secrets-key").value)  # type: ignore[union-attr]
    record["wrapped"] = base64.b64encode(os.urandom(48)).decode()
    barn.put("/herds/risk/secrets-key", json.dumps(record).encode())
    with pytest.raises(
        SecretError, match=r"herd risk's data key at /herds/risk/secrets-key does not decrypt"
    ) as raised:
        BarnSecrets(barn, master_key=KEY).get("risk", "token")
    assert raised.value.__suppress_context__  # the InvalidTag is not shown with it


def test_rotation_rewraps_every_herd(barn: MemoryBarn) -> None:
    secrets = BarnSecrets(barn, master_key=KEY)
    for herd in ("risk", "finance", "ops"):
        secrets.put(herd, "token", herd.encode())
    before = {kv.key: kv.value for kv in barn.scan("/herds/")}
    assert secrets.rotate_master_key(OTHER_KEY) == 3
    assert secrets.master_key_id == key_id(OTHER_KEY)
    after = {kv.key: kv.value for kv in barn.scan("/herds/")}
    for herd in ("risk", "finance", "ops"):
        assert after[f"/herds/{herd}/secrets-key"] != before[f"/herds/{herd}/secrets-key"]
        assert after[f"/herds/{herd}/secrets/token"] == before[f"/herds/{herd}/secrets/token"]  # not re-encrypted
        assert secrets.get(herd, "token") == herd.encode()
        assert BarnSecrets(barn, master_key=OTHER_KEY).get(herd, "token") == herd.encode()
        with pytest.raises(SecretError, match=f"does not open herd {herd}'s data key"):
            BarnSecrets(barn, master_key=KEY).get(herd, "token")
    assert secrets.put("risk", "token", b"after") == 2
    # again with the same key: nothing left to rewrap
    assert secrets.rotate_master_key(OTHER_KEY) == 0


def test_rotation_refuses_keys_it_cannot_open_and_changes_nothing(barn: MemoryBarn) -> None:
    BarnSecrets(barn, master_key=KEY).put("risk", "token", b"v")
    BarnSecrets(barn, master_key=OTHER_KEY).put("finance", "token", b"v")
    before = {kv.key: kv.value for kv in barn.scan("")}
    with pytest.raises(SecretError, match=r"herds finance \(.*nothing was rotated"):
        BarnSecrets(barn, master_key=KEY).rotate_master_key(os.urandom(32))
    assert {kv.key: kv.value for kv in barn.scan("")} == before


def test_rotation_drops_the_entries_of_deleted_herds(barn: MemoryBarn) -> None:
    secrets = BarnSecrets(barn, master_key=KEY)
    secrets.put("risk", "token", b"v")
    secrets.put("gone", "token", b"v")
    for kv in barn.scan("/herds/gone/"):  # what deleting a herd does to its keys
        barn.delete(kv.key)
    assert secrets.rotate_master_key(OTHER_KEY) == 1
    assert [kv.key for kv in barn.scan("/cluster/secret-herds/")] == ["/cluster/secret-herds/risk"]


class SlowReadBarn(MemoryBarn):
    """A Barn whose reads of secrets take a while: writers that race read the same version."""

    def get(self, key: str) -> KeyValue | None:
        found = super().get(key)
        if "/secrets" in key:
            time.sleep(0.003)
        return found


def test_concurrent_puts_get_distinct_consecutive_versions() -> None:
    barn = SlowReadBarn()
    drivers = [BarnSecrets(barn, master_key=KEY) for _ in range(2)]  # two servers, one Barn
    versions: list[int] = []
    start = threading.Barrier(8)

    def put(index: int) -> None:
        start.wait()
        versions.append(drivers[index % 2].put("risk", "token", f"value {index}".encode()))

    threads = [threading.Thread(target=put, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(1, 9))
    # one data key for the herd, though both servers raced to make it
    assert drivers[1].get("risk", "token") == drivers[0].get("risk", "token")
    assert len(barn.scan("/herds/risk/secrets-key")) == 1
    barn.close()


def test_racing_servers_make_one_data_key() -> None:
    barn = SlowReadBarn()
    drivers = [BarnSecrets(barn, master_key=KEY) for _ in range(8)]
    start = threading.Barrier(8)

    def put(index: int) -> None:
        start.wait()
        drivers[index].put("risk", f"s{index}", b"v")

    threads = [threading.Thread(target=put, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fresh = BarnSecrets(barn, master_key=KEY)
    assert [fresh.get("risk", f"s{index}") for index in range(8)] == [b"v"] * 8
    ids = {json.loads(kv.value)["data_key_id"] for kv in barn.scan("/herds/risk/secrets/")}
    assert len(ids) == 1
    barn.close()


def test_a_deleted_herd_takes_its_secrets_and_a_new_one_gets_a_new_key(barn: MemoryBarn) -> None:
    secrets = BarnSecrets(barn, master_key=KEY)
    secrets.put("risk", "token", b"v")
    old_key = barn.get("/herds/risk/secrets-key").value  # type: ignore[union-attr]
    for kv in barn.scan("/herds/risk/"):
        barn.delete(kv.key)
    with pytest.raises(SecretNotFoundError):
        secrets.get("risk", "token")
    assert secrets.put("risk", "token", b"w") == 1  # this driver had the old data key cached
    assert barn.get("/herds/risk/secrets-key").value != old_key  # type: ignore[union-attr]
    assert BarnSecrets(barn, master_key=KEY).get("risk", "token") == b"w"


# --- barn: the master key file -----------------------------------------------------------------


def test_master_key_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    made = create_master_key(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert key_id(read_master_key(path)) == made
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]  # no temporary left
    with pytest.raises(SecretError, match=f"master key file {path} exists; refusing to overwrite it"):
        create_master_key(path)
    assert key_id(read_master_key(path)) == made


def test_master_key_file_readable_by_others_is_refused(tmp_path: Path, barn: MemoryBarn) -> None:
    path = tmp_path / "master.key"
    create_master_key(path)
    path.chmod(0o644)
    with pytest.raises(SecretError) as raised:
        BarnSecrets(barn, master_key_file=path)
    assert str(raised.value) == (
        f"master key file {path} has mode 0644: group or others may read it; refused (chmod 600 {path})"
    )


def test_master_key_file_symlink_and_bad_contents_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    create_master_key(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(SecretError, match="is a symlink; refused"):
        read_master_key(link)
    with pytest.raises(SecretError, match="exists; refusing"):
        create_master_key(link)  # not written through the link either
    short = tmp_path / "short.key"
    short.write_bytes(base64.b64encode(b"x" * 16))
    short.chmod(0o600)
    with pytest.raises(SecretError, match="holds 16 bytes; a master key is 32"):
        read_master_key(short)
    big = tmp_path / "big.key"
    big.write_bytes(b"A" * 5000)
    big.chmod(0o600)
    with pytest.raises(SecretError, match="larger than 1024 bytes"):
        read_master_key(big)
    os.mkfifo(tmp_path / "fifo.key", 0o600)
    with pytest.raises(SecretError, match="not a regular file"):
        read_master_key(tmp_path / "fifo.key")


def test_barn_driver_needs_one_master_key(barn: MemoryBarn) -> None:
    with pytest.raises(InvalidSecretError, match="give either master_key_file or master_key"):
        BarnSecrets(barn)
    with pytest.raises(InvalidSecretError, match="must be 32 bytes, got 5 bytes"):
        BarnSecrets(barn, master_key=b"short")


# --- file -------------------------------------------------------------------------------------


def test_file_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "secrets"
    secrets = FileSecrets(root)
    secrets.put("risk", "token", b"plain")
    assert (root / "risk" / "token").read_bytes() == b"plain"
    assert (root.stat().st_mode & 0o777) == 0o700
    assert ((root / "risk").stat().st_mode & 0o777) == 0o700
    assert ((root / "risk" / "token").stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in (root / "risk").iterdir()) == [".versions.json", "token"]  # no temporaries


def test_file_refuses_a_symlinked_herd_directory(tmp_path: Path) -> None:
    root = tmp_path / "secrets"
    secrets = FileSecrets(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "token").write_bytes(b"planted")
    (root / "risk").symlink_to(elsewhere)
    with pytest.raises(SecretError, match=f"{root / 'risk'}: is a symlink; refused"):
        secrets.get("risk", "token")
    with pytest.raises(SecretError, match="is a symlink; refused"):
        secrets.put("risk", "token", b"v")
    assert (elsewhere / "token").read_bytes() == b"planted"


def test_file_refuses_a_symlinked_secret_and_root(tmp_path: Path) -> None:
    root = tmp_path / "secrets"
    secrets = FileSecrets(root)
    secrets.put("risk", "token", b"v")
    target = tmp_path / "target"
    target.write_bytes(b"not a secret")
    (root / "risk" / "link").symlink_to(target)
    with pytest.raises(SecretError, match="link: is a symlink; refused"):
        secrets.get("risk", "link")
    assert [info.name for info in secrets.list("risk")] == ["token"]
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(root)
    with pytest.raises(SecretError, match="is a symlink; refused"):
        FileSecrets(linked_root)


def test_file_refuses_an_open_directory(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir()
    root.chmod(0o755)
    with pytest.raises(SecretError, match=f"directory {root} has mode 0755: group or others may open it"):
        FileSecrets(root)


def test_file_versions_survive_a_new_driver(tmp_path: Path) -> None:
    FileSecrets(tmp_path / "s").put("risk", "token", b"1")
    FileSecrets(tmp_path / "s").put("risk", "token", b"2")
    assert FileSecrets(tmp_path / "s").version("risk", "token") == 2


# --- env --------------------------------------------------------------------------------------


def test_env_variable_names() -> None:
    assert variable_name("risk-eu.1", "db.password-x") == "RUNINK_SECRET_RISK_EU_1__DB_PASSWORD_X"
    secrets = EnvSecrets({"RUNINK_SECRET_RISK__DB_PASSWORD": "pw", "RUNINK_SECRET_RISKY__DB_PASSWORD": "no"})
    assert secrets.get("risk", "db-password") == b"pw"
    assert [info.name for info in secrets.list("risk")] == ["DB_PASSWORD"]
    assert secrets.get("risk", "DB_PASSWORD") == b"pw"  # the name list gives reads back


def test_env_refuses_herds_whose_prefix_reaches_another(tmp_path: Path) -> None:
    secrets = EnvSecrets({"RUNINK_SECRET_A__B__TOKEN": "a__b's"})
    with pytest.raises(InvalidSecretError, match="herd 'a__b' becomes 'A__B'"):
        secrets.get("a__b", "token")
    # herd a reads its own secret B__TOKEN: no herd a__b can have set it
    assert secrets.get("a", "B__TOKEN") == b"a__b's"


def test_env_is_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNINK_SECRET_RISK__TOKEN", "from-env")
    secrets = EnvSecrets()
    assert secrets.get("risk", "token") == b"from-env"
    with pytest.raises(SecretReadOnlyError, match="env secrets are read-only: cannot store secret 'token' of herd"):
        secrets.put("risk", "token", b"v")
    with pytest.raises(SecretReadOnlyError, match="unset RUNINK_SECRET_RISK__TOKEN"):
        secrets.delete("risk", "token")


def test_env_secret_variables_are_not_config_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={"RUNINK_SECRET_RISK__DB_PASSWORD": "pw", "RUNINK_SECRETS__DRIVER": "env"})
    assert config.secrets.driver == "env"
    with pytest.raises(ConfigError):  # any other unknown RUNINK_ variable still is an error
        load_config(environ={"RUNINK_SECRETX_RISK": "pw"})


def test_a_master_key_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("TEAM_MASTER_KEY", base64.b64encode(key).decode())
    assert read_master_key("env:TEAM_MASTER_KEY") == key
    barn = MemoryBarn()
    stored = BarnSecrets(barn, master_key_file="env:TEAM_MASTER_KEY")
    stored.put("team", "pw", b"v1")
    assert BarnSecrets(barn, master_key=key).get("team", "pw") == b"v1"  # the same key
    with pytest.raises(SecretError, match=r"the environment variable NOPE_KEY is not set"):
        read_master_key("env:NOPE_KEY")
    monkeypatch.setenv("SHORT_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(SecretError, match=r"\$SHORT_KEY holds 5 bytes; a master key is 32"):
        read_master_key("env:SHORT_KEY")


class FakeKms:
    """A KMS plugin: serves one master key under kms:test/runink, refuses kms:test/broken."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.asked: list[str] = []

    @hookimpl
    def runink_master_key(self, source: str) -> bytes | None:
        self.asked.append(source)
        if source == "kms:test/broken":
            raise RuntimeError("the KMS said no")
        return self.key if source == "kms:test/runink" else None


def test_hook_runink_master_key(tmp_path: Path) -> None:
    """A server given --secrets-key kms:... gets its master key from the plugin that knows it;
    an unknown source or a plugin's failure stops it with a line naming the source."""
    from runink.core.config import RuninkConfig
    from runink.core.server.process import ServerOptions, secret_backend

    key = os.urandom(32)
    kms = FakeKms(key)
    barn = MemoryBarn()
    with plugin_manager(("kms", kms), entrypoints=False) as manager:
        options = ServerOptions(secrets_key=Path("kms:test/runink"))
        backend = secret_backend(options, RuninkConfig(), manager, barn)
        assert backend is not None
        ClusterStore(barn).create_herd(Herd(name="team"))  # (a server's secrets go to live herds only)
        backend.put("team", "pw", b"v1")
        assert BarnSecrets(barn, master_key=key).get("team", "pw") == b"v1"  # under the KMS's key
        assert kms.asked == ["kms:test/runink"]
        with pytest.raises(SecretError, match="master key kms:test/other: no plugin knows it"):
            secret_backend(ServerOptions(secrets_key=Path("kms:test/other")), RuninkConfig(), manager, barn)
        with pytest.raises(SecretError, match=r"kms:test/broken: the plugin serving it failed: RuntimeError: the KMS"):
            secret_backend(ServerOptions(secrets_key=Path("kms:test/broken")), RuninkConfig(), manager, barn)


def test_a_servers_configured_barn_backend_stores_secrets_for_live_herds_only(tmp_path: Path) -> None:
    # (as --secrets-key's: a put racing a herd's delete must not leave its secret to the next)
    from runink.core.config import RuninkConfig
    from runink.core.server.process import ServerOptions, secret_backend

    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(KEY).decode() + "\n")
    key_file.chmod(0o600)
    config = RuninkConfig.model_validate({"secrets": {"driver": "barn", "options": {"master_key_file": str(key_file)}}})
    with plugin_manager(entrypoints=True) as manager:
        backend = secret_backend(ServerOptions(), config, manager, MemoryBarn())
    assert isinstance(backend, BarnSecrets) and backend.herds
    with pytest.raises(InvalidSecretError, match="no such herd"):
        backend.put("ghost", "pw", b"v")
