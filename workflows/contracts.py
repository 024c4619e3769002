"""The contract between the control plane, its workflows and the workers: workflow, signal,
query and activity names, and the payload types they exchange. Both sides import these names;
neither spells them again.

Dataclasses with defaults, one input per activity, so fields can be added compatibly (running
workflows replay old payloads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AGENT_EXECUTION_WORKFLOW = "AgentExecutionWorkflow"
TEAM_EXECUTION_WORKFLOW = "TeamExecutionWorkflow"
QUEUE_PROBE_WORKFLOW = "QueueProbeWorkflow"
# The control plane's own workflows, on its system worker's task queue.
HOUSEKEEPING_WORKFLOW = "HousekeepingWorkflow"
PRUNE_COUNTERS = "prune_counters"
RECONCILE_EXECUTIONS = "reconcile_executions"
# Task planning (workflows/plan_generation.py), also on the system worker.
PLAN_GENERATION_WORKFLOW = "PlanGenerationWorkflow"
GET_PLAN_STATE = "get_plan_state"
BEGIN_PLAN_GENERATION = "begin_plan_generation"
RUN_PLANNING_TOOL = "run_planning_tool"
PLAN_MODEL_STEP = "plan_model_step"
FINISH_PLAN_GENERATION = "finish_plan_generation"
ANNOUNCE_STALE_WORKERS = "announce_stale_workers"
# Outbound webhooks: one dispatcher per system task queue fans the outbox out into deliveries,
# one workflow per delivery posts it until it is delivered or its retry window ends.
WEBHOOK_DISPATCHER_WORKFLOW = "WebhookDispatcherWorkflow"
WEBHOOK_DELIVERY_WORKFLOW = "WebhookDeliveryWorkflow"
DISPATCH_WEBHOOK_EVENTS = "dispatch_webhook_events"
ATTEMPT_WEBHOOK_DELIVERY = "attempt_webhook_delivery"
GIVE_UP_WEBHOOK_DELIVERY = "give_up_webhook_delivery"
# Signals and the query of an execution's workflow (reference §5.1).
ADD_MESSAGE = "add_message"
MARK_AS_DONE = "mark_as_done"
PAUSE_EXECUTION = "pause_execution"
RESUME_EXECUTION = "resume_execution"
GET_STATE = "get_state"
# Activity names, shared by the workflow (which schedules) and the worker (which registers).
EXECUTE_WITH_RUNTIME = "execute_with_runtime"
UPDATE_EXECUTION_STATUS = "update_execution_status"
PUBLISH_EVENT = "publish_event"
PERSIST_CONVERSATION = "persist_conversation_history"
# Several of the three reports above in one activity and one request (workflows/conversation.py).
REPORT_BATCH = "report_batch"
# The patch under which an execution workflow sends its reports in batches (and hands the ones
# due before a model call to the model call itself); executions started before it replay on
# the single-report path.
BATCHED_REPORTS_PATCH = "batched-reports"
RUN_TOOL = "run_tool"
LIST_MCP_TOOLS = "list_mcp_tools"
# A team's member run: the control plane records it (from its own rows) and answers its input.
CREATE_MEMBER_EXECUTION = "create_member_execution"
ANSWER_PROBE = "answer_probe"

TERMINAL_STATES = ("completed", "failed", "cancelled")


def workflow_id_for(execution_id: str, execution_type: str = "agent") -> str:
    """The Temporal workflow id of an execution (reference §5.1)."""
    return f"{execution_type}-execution-{execution_id}"


def plan_workflow_id(execution_id: str) -> str:
    return f"plan-{execution_id}"


def webhook_dispatcher_id(task_queue: str) -> str:
    """One dispatcher per system task queue (in production: one for the control plane)."""
    return f"webhook-dispatcher-{task_queue}"


def webhook_delivery_id(delivery_id: str) -> str:
    return f"webhook-delivery-{delivery_id}"


@dataclass
class ChatMessage:
    role: str  # user | assistant | system | tool
    content: str
    timestamp: str
    message_id: str
    tool_name: str | None = None
    tool_input: dict[str, Any] | None = None
    tool_output: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    user_email: str | None = None
    user_avatar: str | None = None


@dataclass
class ModelSpec:
    value: str  # catalogue id, e.g. anthropic/claude-sonnet-4-5
    api_model: str  # what the Anthropic API is sent, e.g. claude-sonnet-4-5
    input_per_million: float = 0.0
    output_per_million: float = 0.0


@dataclass
class TurnUsage:
    turn: int
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class Usage:
    """Tokens and cost of an execution, in total and per turn (a turn may take several model
    calls when the model uses tools)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    turns: int = 0
    per_turn: list[TurnUsage] = field(default_factory=list)

    def add(self, other: Usage, turn: int = 0) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd = round(self.cost_usd + other.cost_usd, 8)
        self.turns += other.turns
        if not self.per_turn or self.per_turn[-1].turn != turn:
            self.per_turn.append(TurnUsage(turn))
        entry = self.per_turn[-1]
        entry.input_tokens += other.input_tokens
        entry.output_tokens += other.output_tokens
        entry.cost_usd = round(entry.cost_usd + other.cost_usd, 8)


@dataclass
class AgentExecutionInput:
    execution_id: str
    agent_id: str
    organization_id: str
    prompt: str
    model: ModelSpec
    system_prompt: str | None = None
    runtime_type: str = "default"
    one_shot: bool = False
    max_tokens: int = 4096
    user_metadata: dict[str, Any] = field(default_factory=dict)
    # How long a waiting execution waits for the next message before it completes.
    idle_timeout_seconds: int = 24 * 3600
    # Carried across continue-as-new; empty on the first run.
    messages: list[ChatMessage] = field(default_factory=list)
    model_messages: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    turn: int = 0
    pending: list[ChatMessage] = field(default_factory=list)
    reports: int = 0
    # The agent's tools from its resolved skills; MCP tools are listed by the worker at start.
    tools: list[ToolSpec] = field(default_factory=list)
    has_mcp_servers: bool = False
    policy: PolicyContext | None = None


@dataclass
class TeamMember:
    """A member as its leader sees it: who to delegate to, and what it is good at."""

    agent_id: str
    name: str
    description: str | None = None
    # For claude_code teams, whose members run as the leader's SDK subagents.
    system_prompt: str | None = None
    tool_names: list[str] = field(default_factory=list)


@dataclass
class MemberUsage:
    """One member's share of a team execution's usage, over all its runs."""

    name: str
    runs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class TeamExecutionInput:
    execution_id: str
    team_id: str
    team_name: str
    organization_id: str
    prompt: str
    members: list[TeamMember]
    coordination_type: str = "leader"  # leader | sequential | parallel
    runtime_type: str = "default"
    # The leader's (or, in parallel mode, the synthesiser's) model; None: a parallel team
    # without a model joins its members' answers.
    model: ModelSpec | None = None
    system_prompt: str | None = None
    one_shot: bool = False
    max_tokens: int = 4096
    user_metadata: dict[str, Any] = field(default_factory=dict)
    idle_timeout_seconds: int = 24 * 3600
    # claude_code teams: the members' tools, run inside the leader's call, each policy-checked.
    tools: list[ToolSpec] = field(default_factory=list)
    policy: PolicyContext | None = None
    # Carried across continue-as-new; empty on the first run.
    messages: list[ChatMessage] = field(default_factory=list)
    model_messages: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    member_usage: dict[str, MemberUsage] = field(default_factory=dict)
    turn: int = 0
    pending: list[ChatMessage] = field(default_factory=list)
    reports: int = 0


@dataclass
class MemberExecutionRequest:
    """Input of `create_member_execution`: which member, what task, for which team run. The
    key makes a retried request answer the same member run."""

    team_execution_id: str
    agent_id: str
    task: str
    delegation_key: str


@dataclass
class MemberExecution:
    """The member run the control plane recorded, and the input of its agent workflow."""

    execution_id: str
    workflow_id: str
    agent_id: str
    name: str
    input: AgentExecutionInput


@dataclass
class ExecutionState:
    """What the `get_state` query answers."""

    status: str
    messages: list[ChatMessage]
    current_response: str
    error_message: str | None
    usage: Usage
    is_waiting_for_input: bool
    should_complete: bool
    turn: int


@dataclass
class RuntimeTurnInput:
    execution_id: str
    turn: int
    model: ModelSpec
    system_prompt: str | None
    model_messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int = 4096
    runtime_type: str = "default"
    # Step within the turn (model call number), so chunk event keys stay unique.
    step: int = 0
    # For runtimes that run tools inside the model call (claude_code): the tools themselves
    # and who they act for, so each call is policy-checked and run like a run_tool activity.
    tool_specs: list[ToolSpec] = field(default_factory=list)
    policy: PolicyContext | None = None
    # A claude_code team's leader: its members, as the SDK's subagents.
    subagents: list[TeamMember] = field(default_factory=list)
    # Reports due before this call (the execution's `running`, the user's message): the
    # activity sends them first, so they cost no activity of their own.
    reports: list[ReportItem] = field(default_factory=list)


@dataclass
class RuntimeTurnResult:
    content: list[dict[str, Any]]  # Anthropic content blocks: text and tool_use
    stop_reason: str
    usage: Usage
    text: str


@dataclass
class StatusUpdate:
    execution_id: str
    status: str
    response: str | None = None
    error_message: str | None = None
    usage: dict[str, Any] | None = None
    reason: str | None = None
    mark_started: bool = False
    mark_completed: bool = False
    version: int = 0


@dataclass
class EventReport:
    execution_id: str
    event_type: str
    data: dict[str, Any]
    event_key: str


@dataclass
class ConversationSnapshot:
    execution_id: str
    messages: list[ChatMessage]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportItem:
    """One report to the control plane: exactly one field is set."""

    status: StatusUpdate | None = None
    event: EventReport | None = None
    session: ConversationSnapshot | None = None


@dataclass
class ReportBatch:
    """Input of `report_batch`: reports applied in order, in one request and transaction."""

    execution_id: str
    items: list[ReportItem]


# --- tools ------------------------------------------------------------------------------------


@dataclass
class ToolSpec:
    """A tool the model may call, and how the worker runs it. Built by the API from the
    agent's resolved skills (controlplane/tool_catalogue.py) or by the worker from MCP servers.
    `configuration` never holds secret values: those are resolved inside activities."""

    name: str  # what the model sees and calls
    description: str
    input_schema: dict[str, Any]
    source: str = "builtin"  # builtin | mcp | skill
    category: str = ""  # the skill type: shell, file_system, python, http, sleep, mcp, ...
    risk_level: str = "medium"  # critical | high | medium | low
    skill_id: str | None = None
    configuration: dict[str, Any] = field(default_factory=dict)
    mcp_server: str | None = None  # for source == "mcp": the server's name

    def model_definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }


@dataclass
class PolicyContext:
    """Who and what a tool call acts for: the non-tool parts of the policy input."""

    organization_id: str
    execution_id: str
    agent_id: str | None = None
    agent_name: str | None = None
    team_id: str | None = None
    environment_ids: list[str] = field(default_factory=list)
    user: dict[str, Any] = field(default_factory=dict)


@dataclass
class ToolCall:
    """Input of the `run_tool` activity: one call the model made."""

    execution_id: str
    turn: int
    tool_use_id: str
    tool: ToolSpec
    arguments: dict[str, Any]
    policy: PolicyContext


@dataclass
class ToolOutcome:
    output: str
    is_error: bool = False
    status: str = "success"  # success | error | denied
    violations: list[str] = field(default_factory=list)


# --- the control plane's own workflows ---------------------------------------------------------


@dataclass
class HousekeepingResult:
    """What one housekeeping round did: stale counters and idempotency records removed, and
    executions settled from their closed workflows."""

    pruned: int = 0
    settled: int = 0
    stale_workers: int = 0


# --- task planning ------------------------------------------------------------------------------
#
# A plan generation is two structured model calls (analysis, then the plan), each a forced tool
# call whose input the control plane validates, with the planning tools (reads of the
# organization's agents, teams, environments and worker queues) run before them for what the
# request left out. Plans and requests travel as JSON objects: their pydantic models live in
# the domain (controlplane/planning/plan.py), which the workflow does not import.

PLANNING_TOOLS = {
    # tool name: the TaskPlanRequest list it stands in for
    "list_agents": "agents",
    "list_teams": "teams",
    "list_environments": "environments",
    "list_worker_queues": "worker_queues",
}
PLAN_STEPS = ("analysis", "plan")
# Types of the ApplicationErrors planning activities raise that no retry can fix.
MODEL_NOT_CONFIGURED = "ModelNotConfigured"
MODEL_REFUSED = "ModelRefused"
EXECUTION_GONE = "ExecutionGone"


@dataclass
class PlanGenerationInput:
    execution_id: str
    organization_id: str
    request: dict[str, Any]  # a TaskPlanRequest
    model: ModelSpec  # the planner model, with its prices
    analysis_max_tokens: int = 4096
    plan_max_tokens: int = 16384


@dataclass
class PlanBegin:
    execution_id: str
    organization_id: str
    model: str  # the planner model's catalogue value, recorded on the execution


@dataclass
class PlanningToolCall:
    execution_id: str
    organization_id: str
    tool_name: str  # a key of PLANNING_TOOLS
    tool_id: str  # unique within the generation


@dataclass
class PlanningToolResult:
    tool_name: str
    items: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0  # how many exist; items may hold fewer (the list is capped)


@dataclass
class PlanRepair:
    """The answer that did not validate, and why: the repair call shows both to the model."""

    tool_use_id: str
    answer: dict[str, Any]
    errors: list[str]


@dataclass
class PlanModelStep:
    """Input of `plan_model_step`: one forced-tool model call of a step, validated."""

    execution_id: str
    organization_id: str
    step: str  # analysis | plan
    model: ModelSpec
    request: dict[str, Any]
    resources: dict[str, list[dict[str, Any]]]  # agents, teams, environments, worker_queues
    max_tokens: int = 4096
    analysis: dict[str, Any] | None = None  # the validated analysis, for the plan step
    repair: PlanRepair | None = None


@dataclass
class StepUsage:
    step: str
    model: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class PlanModelStepResult:
    tool_use_id: str
    answer: dict[str, Any] | None  # the tool input the model sent (None: it called no tool)
    output: dict[str, Any] | None  # the validated answer; None when `errors`
    errors: list[str]
    usage: StepUsage


@dataclass
class PlanError:
    """Why a generation failed. `kind`: model_not_configured, invalid_model_output,
    model_error, cancelled or internal_error."""

    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanFinish:
    """Input of `finish_plan_generation`: the outcome, recorded on the execution. A completed
    generation carries the validated analysis and plan draft, which the domain turns into the
    TaskPlanResponse (names resolved to ids, costs from the models' prices)."""

    execution_id: str
    organization_id: str
    status: str  # completed | failed | cancelled
    request: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    analysis: dict[str, Any] | None = None
    draft: dict[str, Any] | None = None
    usage: list[StepUsage] = field(default_factory=list)
    error: PlanError | None = None


@dataclass
class PlanGenerationResult:
    execution_id: str
    status: str
    plan: dict[str, Any] | None = None  # a TaskPlanResponse
    usage: list[StepUsage] = field(default_factory=list)
    error: PlanError | None = None


@dataclass
class PlanState:
    """What the `get_plan_state` query answers."""

    stage: str  # starting | discovering | analysis | plan | finishing | completed | failed
    attempts: dict[str, int] = field(default_factory=dict)
    usage: list[StepUsage] = field(default_factory=list)


@dataclass
class WebhookDispatcherState:
    """Carried across the dispatcher's continue-as-new: how much it has done, for the UI."""

    rounds: int = 0
    scheduled: int = 0


@dataclass
class WebhookDispatch:
    """One dispatch round: wait up to `wait_seconds` for outbox events, fan them out into
    deliveries and start a delivery workflow for each."""

    wait_seconds: int = 30


@dataclass
class WebhookDeliveryInput:
    """One event for one subscription: retried with exponential backoff (first delay, doubling,
    capped) until delivered or until `window_seconds` have passed since the first attempt."""

    delivery_id: str
    first_retry_seconds: int = 5
    max_retry_seconds: int = 3600
    window_seconds: int = 24 * 3600


@dataclass
class WebhookAttempt:
    delivery_id: str
    attempt: int
    # When the next attempt comes if this one fails; None: this is the last one.
    next_retry_seconds: int | None = None


@dataclass
class WebhookAttemptOutcome:
    outcome: str  # delivered | failed | abandoned (the subscription or the event is gone)
    status_code: int | None = None
    error: str | None = None


@dataclass
class WebhookGiveUp:
    delivery_id: str
    window_seconds: int


@dataclass
class WebhookDeliveryResult:
    status: str  # succeeded | failed | abandoned
    attempts: int
    subscription_disabled: bool = False


# --- runs: plan executions and user-defined workflows ------------------------------------------
#
# A run is a DAG of steps (a plan's tasks, a workflow's steps), orchestrated on the system worker
# in the control plane's namespace. Each agent or team step is an execution of the organization,
# which the run starts, signals and awaits through activities (Temporal has no cross-namespace
# children); an approval step waits for a user's decision, a signal. See workflows/runs.py.

PLAN_ORCHESTRATOR_WORKFLOW = "PlanOrchestratorWorkflow"
WORKFLOW_INTERPRETER_WORKFLOW = "WorkflowInterpreterWorkflow"
# Activities (system worker).
BEGIN_RUN = "begin_run"
START_RUN_STEP = "start_run_step"
AWAIT_RUN_STEP = "await_run_step"
RECORD_RUN_PROGRESS = "record_run_progress"
MESSAGE_RUN_STEP = "message_run_step"
CANCEL_RUN_STEPS = "cancel_run_steps"
FINISH_RUN = "finish_run"
# Signals and the query of a run's workflow (pause_execution and resume_execution too).
DECIDE_STEP = "decide_step"
MESSAGE_STEP = "message_step"
COMPLETE_RUN = "complete_run"
GET_RUN_STATE = "get_run_state"
# Types of the ApplicationErrors run activities raise that no retry can fix.
STEP_REFUSED = "StepRefused"
RUN_GONE = "RunGone"

STEP_KINDS = ("agent", "team", "approval")
# A step's statuses: the first four are live, the rest final.
StepStatus = Literal[
    "pending",
    "running",
    "waiting_for_input",
    "waiting_for_approval",
    "completed",
    "failed",
    "rejected",
    "skipped",
    "cancelled",
]
FINAL_STEP_STATUSES = ("completed", "failed", "rejected", "skipped", "cancelled")


def run_workflow_type(execution_type: str) -> str:
    """The workflow a run of `execution_type` (plan | workflow) runs."""
    return PLAN_ORCHESTRATOR_WORKFLOW if execution_type == "plan" else WORKFLOW_INTERPRETER_WORKFLOW


@dataclass
class RunStep:
    """One node of a run's graph. `prompt` is a plan task's text (its dependencies' outputs are
    added when it starts) or a workflow step's template."""

    id: str
    kind: str  # agent | team | approval
    name: str = ""
    entity_id: str | None = None
    prompt: str = ""
    depends_on: list[str] = field(default_factory=list)


@dataclass
class RunInput:
    execution_id: str
    organization_id: str
    worker_queue_id: str
    steps: list[RunStep]
    title: str = ""
    # A workflow run's inputs, for its templates.
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunBegin:
    execution_id: str
    organization_id: str


@dataclass
class StepState:
    """A step as the run sees it; recorded in the read model at every change."""

    status: str = "pending"
    execution_id: str | None = None
    output: str | None = None
    error: str | None = None
    prompt: str | None = None  # what the step was given (rendered)
    decided_by: str | None = None


@dataclass
class RunProgress:
    """Input of `record_run_progress`: a step's new state and the run's status. `sequence`
    counts the run's records: a record lands once, and an older one never overwrites the run's
    status of a newer one."""

    execution_id: str
    organization_id: str
    run_status: str  # running | waiting_for_input | paused
    sequence: int
    step_id: str | None = None
    step: StepState | None = None
    reason: str | None = None


@dataclass
class StepStart:
    """Input of `start_run_step`: start a step's execution (the run's child, keyed by the
    step's id) and record the step running with it."""

    run_execution_id: str
    organization_id: str
    step_id: str
    kind: str  # agent | team
    entity_id: str
    prompt: str
    worker_queue_id: str
    progress: RunProgress | None = None


@dataclass
class StepLaunched:
    execution_id: str
    workflow_id: str


@dataclass
class StepWatch:
    """Input of `await_run_step`: wait (heartbeating) until the step's execution is seen in
    another phase than `seen_phase`, or waits for input again (its transitions counted past
    `seen_transitions`), or `max_wait_seconds` pass."""

    run_execution_id: str
    organization_id: str
    step_id: str
    execution_id: str
    seen_phase: str = "live"  # live | waiting
    seen_transitions: int = 0
    max_wait_seconds: int = 3600


@dataclass
class StepObservation:
    execution_id: str
    status: str
    phase: str  # live | waiting | ended
    transitions: int
    changed: bool
    response: str | None = None
    error_message: str | None = None


@dataclass
class StepMessage:
    """Signal `message_step`: a user's message for a step waiting for input; `mark_done` ends
    its conversation after the answer."""

    step_id: str
    message: str
    mark_done: bool = False
    actor: str = ""


@dataclass
class StepMessageDelivery:
    """Input of `message_run_step`: the message, passed on to the step's execution."""

    run_execution_id: str
    organization_id: str
    execution_id: str
    message: StepMessage


@dataclass
class StepDecision:
    """Signal `decide_step`: a user's decision on an approval step."""

    step_id: str
    approved: bool
    actor: str = ""
    comment: str | None = None


@dataclass
class RunCancel:
    """Input of `cancel_run_steps`: cancel the run's live step executions and record its
    unfinished steps `status` (cancelled) or, for those never started, skipped."""

    execution_id: str
    organization_id: str
    reason: str = "Run cancelled"
    sequence: int = 0


@dataclass
class RunFinish:
    execution_id: str
    organization_id: str
    status: str  # completed | failed | cancelled
    error: str | None = None
    reason: str | None = None
    sequence: int = 0


@dataclass
class RunState:
    """What the `get_run_state` query answers."""

    status: str
    paused: bool
    steps: dict[str, StepState] = field(default_factory=dict)


# --- jobs: schedules and triggers ----------------------------------------------------------------
#
# A cron job is a Temporal Schedule (`job-{id}`) in the control plane's namespace whose action
# starts JobRunWorkflow on the system task queue; its one activity calls the job-trigger use case
# (controlplane/jobs/runs.py), which starts the run in the organization's namespace (Temporal
# has no cross-namespace children). Manual and webhook triggers call the same use case directly.

JOB_RUN_WORKFLOW = "JobRunWorkflow"
RUN_SCHEDULED_JOB = "run_scheduled_job"
# Types of the ApplicationErrors the job activity raises that no retry can fix.
JOB_REFUSED = "JobRefused"


def job_schedule_id(job_id: str) -> str:
    return f"job-{job_id}"


def job_run_workflow_id(job_id: str) -> str:
    # The Schedule appends the scheduled time, so each action's workflow id is its own.
    return f"job-run-{job_id}"


@dataclass
class JobRunInput:
    """What a job's Schedule starts: fixed when the Schedule is written."""

    job_id: str
    organization_id: str


@dataclass
class ScheduledJobRun:
    """One scheduled run of a job. `run_key` (the JobRunWorkflow's id) names this run, so a
    retried activity answers the execution it already started."""

    job_id: str
    organization_id: str
    run_key: str


@dataclass
class JobRunResult:
    """The execution (or workflow run) the job started, or why it started none."""

    execution_id: str | None = None
    skipped: str | None = None  # the job is gone, or disabled
