from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capacity(_message.Message):
    __slots__ = ("cpu", "memory", "gpu", "pids")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    cpu: float
    memory: int
    gpu: int
    pids: int
    def __init__(self, cpu: _Optional[float] = ..., memory: _Optional[int] = ..., gpu: _Optional[int] = ..., pids: _Optional[int] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("node_id", "capacity", "labels", "address", "gpus", "slots", "unfit")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    UNFIT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    capacity: Capacity
    labels: _containers.ScalarMap[str, str]
    address: str
    gpus: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    unfit: str
    def __init__(self, node_id: _Optional[str] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., address: _Optional[str] = ..., gpus: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., unfit: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("node_id", "incarnation", "usage", "unfit")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    UNFIT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: str
    usage: NodeUsage
    unfit: str
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[str] = ..., usage: _Optional[_Union[NodeUsage, _Mapping]] = ..., unfit: _Optional[str] = ...) -> None: ...

class NodeUsage(_message.Message):
    __slots__ = ("cpu", "memory", "tasks", "at")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    cpu: float
    memory: int
    tasks: _containers.RepeatedCompositeFieldContainer[TaskUsage]
    at: float
    def __init__(self, cpu: _Optional[float] = ..., memory: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[TaskUsage, _Mapping]]] = ..., at: _Optional[float] = ...) -> None: ...

class TaskUsage(_message.Message):
    __slots__ = ("task_id", "attempt", "cpu_seconds", "cpu", "memory", "processes")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    cpu_seconds: float
    cpu: float
    memory: int
    processes: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., cpu: _Optional[float] = ..., memory: _Optional[int] = ..., processes: _Optional[int] = ...) -> None: ...

class AssignmentsRequest(_message.Message):
    __slots__ = ("node_id", "wait_ms", "known")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    wait_ms: int
    known: str
    def __init__(self, node_id: _Optional[str] = ..., wait_ms: _Optional[int] = ..., known: _Optional[str] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("herd", "task_id", "attempt", "token", "state", "exit_code", "message", "started", "cpu_seconds", "peak_memory", "seconds")
    HERD_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    herd: str
    task_id: str
    attempt: int
    token: int
    state: str
    exit_code: int
    message: str
    started: float
    cpu_seconds: float
    peak_memory: int
    seconds: float
    def __init__(self, herd: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., token: _Optional[int] = ..., state: _Optional[str] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., started: _Optional[float] = ..., cpu_seconds: _Optional[float] = ..., peak_memory: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class Reports(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[Report]
    def __init__(self, reports: _Optional[_Iterable[_Union[Report, _Mapping]]] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("herd", "task_id", "attempt", "token", "stream", "offset", "data")
    HERD_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    herd: str
    task_id: str
    attempt: int
    token: int
    stream: str
    offset: int
    data: bytes
    def __init__(self, herd: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., token: _Optional[int] = ..., stream: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SecretsRequest(_message.Message):
    __slots__ = ("herd", "task_id", "attempt", "token")
    HERD_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    herd: str
    task_id: str
    attempt: int
    token: int
    def __init__(self, herd: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., token: _Optional[int] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("herd", "task_id", "attempt", "event_type", "inputs", "outputs", "event_time", "facets_json")
    HERD_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    FACETS_JSON_FIELD_NUMBER: _ClassVar[int]
    herd: str
    task_id: str
    attempt: int
    event_type: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    event_time: float
    facets_json: str
    def __init__(self, herd: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., event_type: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[str]] = ..., event_time: _Optional[float] = ..., facets_json: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("request_id", "register", "heartbeat", "assignments", "report", "log_chunk", "secrets", "reports", "lineage")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    LOG_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    register: Register
    heartbeat: Heartbeat
    assignments: AssignmentsRequest
    report: Report
    log_chunk: LogChunk
    secrets: SecretsRequest
    reports: Reports
    lineage: Lineage
    def __init__(self, request_id: _Optional[int] = ..., register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., assignments: _Optional[_Union[AssignmentsRequest, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., log_chunk: _Optional[_Union[LogChunk, _Mapping]] = ..., secrets: _Optional[_Union[SecretsRequest, _Mapping]] = ..., reports: _Optional[_Union[Reports, _Mapping]] = ..., lineage: _Optional[_Union[Lineage, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("id", "capacity", "labels", "address", "ready", "cordoned", "draining", "heartbeat", "incarnation", "gpus", "slots")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    capacity: Capacity
    labels: _containers.ScalarMap[str, str]
    address: str
    ready: bool
    cordoned: bool
    draining: bool
    heartbeat: int
    incarnation: str
    gpus: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    def __init__(self, id: _Optional[str] = ..., capacity: _Optional[_Union[Capacity, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., address: _Optional[str] = ..., ready: _Optional[bool] = ..., cordoned: _Optional[bool] = ..., draining: _Optional[bool] = ..., heartbeat: _Optional[int] = ..., incarnation: _Optional[str] = ..., gpus: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("ok",)
    OK_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    def __init__(self, ok: _Optional[bool] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "job_id", "herd", "command", "resources", "timeout", "attempt", "token", "state", "node", "herd_quota", "scenario", "retries", "backoff", "secrets", "secrets_env", "gpus")
    ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HERD_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    HERD_QUOTA_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_ENV_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    job_id: str
    herd: str
    command: _containers.RepeatedScalarFieldContainer[str]
    resources: Capacity
    timeout: float
    attempt: int
    token: int
    state: str
    node: str
    herd_quota: HerdQuota
    scenario: Scenario
    retries: int
    backoff: float
    secrets: _containers.RepeatedScalarFieldContainer[str]
    secrets_env: bool
    gpus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., job_id: _Optional[str] = ..., herd: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[Capacity, _Mapping]] = ..., timeout: _Optional[float] = ..., attempt: _Optional[int] = ..., token: _Optional[int] = ..., state: _Optional[str] = ..., node: _Optional[str] = ..., herd_quota: _Optional[_Union[HerdQuota, _Mapping]] = ..., scenario: _Optional[_Union[Scenario, _Mapping]] = ..., retries: _Optional[int] = ..., backoff: _Optional[float] = ..., secrets: _Optional[_Iterable[str]] = ..., secrets_env: _Optional[bool] = ..., gpus: _Optional[_Iterable[str]] = ...) -> None: ...

class Scenario(_message.Message):
    __slots__ = ("pipeline", "scenario", "run", "roots")
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    ROOTS_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    scenario: str
    run: str
    roots: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pipeline: _Optional[str] = ..., scenario: _Optional[str] = ..., run: _Optional[str] = ..., roots: _Optional[_Iterable[str]] = ...) -> None: ...

class HerdQuota(_message.Message):
    __slots__ = ("cpu", "memory", "gpu", "max_slices")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    MAX_SLICES_FIELD_NUMBER: _ClassVar[int]
    cpu: float
    memory: int
    gpu: int
    max_slices: int
    def __init__(self, cpu: _Optional[float] = ..., memory: _Optional[int] = ..., gpu: _Optional[int] = ..., max_slices: _Optional[int] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("tasks", "version")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    version: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., version: _Optional[str] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class ReportAcks(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, accepted: _Optional[_Iterable[bool]] = ...) -> None: ...

class LogAck(_message.Message):
    __slots__ = ("accepted", "next_offset")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    next_offset: int
    def __init__(self, accepted: _Optional[bool] = ..., next_offset: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class Secrets(_message.Message):
    __slots__ = ("values", "refused")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, bytes]
    refused: str
    def __init__(self, values: _Optional[_Mapping[str, bytes]] = ..., refused: _Optional[str] = ...) -> None: ...

class LineageAck(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("request_id", "registered", "heartbeat_ack", "assignments", "report_ack", "error", "log_ack", "secrets", "report_acks", "lineage_ack")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    REPORT_ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOG_ACK_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    REPORT_ACKS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_ACK_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    registered: Registered
    heartbeat_ack: HeartbeatAck
    assignments: Assignments
    report_ack: ReportAck
    error: Error
    log_ack: LogAck
    secrets: Secrets
    report_acks: ReportAcks
    lineage_ack: LineageAck
    def __init__(self, request_id: _Optional[int] = ..., registered: _Optional[_Union[Registered, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ..., report_ack: _Optional[_Union[ReportAck, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., log_ack: _Optional[_Union[LogAck, _Mapping]] = ..., secrets: _Optional[_Union[Secrets, _Mapping]] = ..., report_acks: _Optional[_Union[ReportAcks, _Mapping]] = ..., lineage_ack: _Optional[_Union[LineageAck, _Mapping]] = ...) -> None: ...
