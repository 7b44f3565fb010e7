"""The Barn HTTP API's request schema: every field of every route, checked before anything is
proposed (pydantic, strict: ``"1"`` is not a number, ``true`` not an integer, ``1e400`` not a
finite number, an unknown field is an error).

The state machine checks the commands again (``state.check_command``): a request that passes
here is one the state accepts, so a bad request is a 400 from the member it reached and never
an entry in the Raft log.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from runink.core.errors import BarnError
from runink.core.interfaces.barn import MAX_KEY_BYTES, check_key, check_value
from runink.plugins.barn.state import MAX_ID, MAX_REQUEST_ID, MAX_TTL, MAX_TXN_OPS

WATCH_WAIT_MAX = 30.0  # seconds a watch may wait on the server
MAX_NAME = 64  # characters of a member's name
MAX_ADDRESS = 300  # characters of a host:port


def _b64(value: Any) -> bytes:
    """A value: base64 text in the request (before the strict bytes check: JSON has no bytes)."""
    if not isinstance(value, str):
        raise ValueError(f"a value is a base64 string, got {type(value).__name__}")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
        return check_value("", data)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("a value is a base64 string; this one is not valid base64") from None
    except BarnError as exc:
        raise ValueError(str(exc).replace("of Barn key '' ", "")) from None


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"an address is host:port, got {value[:80]!r}")
    return value


def _checked(check: Any) -> Any:
    """A validator from one of the Barn's checks (they raise BarnError; pydantic wants ValueError)."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except BarnError as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(validate)


Key = Annotated[str, Field(max_length=MAX_KEY_BYTES), _checked(check_key)]
Prefix = Annotated[str, Field(max_length=MAX_KEY_BYTES)]
Value = Annotated[bytes, BeforeValidator(_b64)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]  # a lease id
Revision = Annotated[int, Field(ge=0, le=MAX_ID)]
RequestId = Annotated[str, Field(min_length=1, max_length=MAX_REQUEST_ID)]
Address = Annotated[str, Field(min_length=3, max_length=MAX_ADDRESS), AfterValidator(_address)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Put(Body):
    key: Key
    value: Value
    lease: Id | None = None
    request_id: RequestId | None = None


class Delete(Body):
    key: Key
    request_id: RequestId | None = None


class TxnOperation(Body):
    key: Key
    value: Value | None = None  # absent or null: delete


class Txn(Body):
    compare: Annotated[list[tuple[Key, Revision]], Field(max_length=MAX_TXN_OPS)] = []
    success: Annotated[list[TxnOperation], Field(max_length=MAX_TXN_OPS)] = []
    failure: Annotated[list[TxnOperation], Field(max_length=MAX_TXN_OPS)] = []
    request_id: RequestId | None = None

    @model_validator(mode="after")
    def _distinct_keys(self) -> Txn:
        for side in (self.success, self.failure):
            keys = [op.key for op in side]
            if len(set(keys)) != len(keys):
                raise ValueError("a key appears twice in one side of the txn")
        return self


class Get(Body):
    key: Key
    serializable: bool = False


class Scan(Body):
    prefix: Prefix = ""
    limit: Annotated[int, Field(ge=0, le=MAX_ID)] | None = None
    after: Prefix | None = None  # only the keys after this one: the next page
    serializable: bool = False


class Count(Body):
    prefix: Prefix = ""
    serializable: bool = False


class Nothing(Body):
    pass


class Watch(Body):
    prefix: Prefix = ""
    from_revision: Annotated[int, Field(ge=-MAX_ID, le=MAX_ID)]  # <= 0: from now on
    wait: Annotated[float, Field(ge=0, le=WATCH_WAIT_MAX, allow_inf_nan=False)] = 10.0


class Grant(Body):
    ttl: Annotated[float, Field(gt=0, le=MAX_TTL, allow_inf_nan=False)]
    request_id: RequestId | None = None


class KeepAlive(Body):
    lease: Id


class Revoke(Body):
    lease: Id
    request_id: RequestId | None = None


class MemberAdd(Body):
    name: Name
    raft: Address
    http: Address


class MemberRemove(Body):
    name: Name
    raft: Annotated[str, Field(max_length=MAX_ADDRESS)] = ""  # default: the address the group knows
    http: Annotated[str, Field(max_length=MAX_ADDRESS)] = ""  # ignored


ROUTES: dict[str, type[Body]] = {
    "/v1/put": Put,
    "/v1/delete": Delete,
    "/v1/txn": Txn,
    "/v1/get": Get,
    "/v1/scan": Scan,
    "/v1/count": Count,
    "/v1/revision": Nothing,
    "/v1/watch": Watch,
    "/v1/lease/grant": Grant,
    "/v1/lease/keepalive": KeepAlive,
    "/v1/lease/revoke": Revoke,
    "/v1/members/add": MemberAdd,
    "/v1/members/remove": MemberRemove,
}


class UnknownRoute(Exception):
    """No such API path (404)."""


def parse(path: str, raw: bytes) -> Body:
    """The request body of ``path``, validated; BarnError names the first bad field."""
    model = ROUTES.get(path)
    if model is None:
        raise UnknownRoute(path)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise BarnError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line: the first error's field and message (and how many more there are)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "json_invalid":
        message = f"invalid JSON: {first.get('ctx', {}).get('error', message)}"
        return message
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "missing":
        return f"missing field {where!r}{more}"
    return f"{where}: {message}{more}"
