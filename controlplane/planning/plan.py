"""The shapes of task planning (reference §3.16, §7.3): what a client asks for
(`TaskPlanRequest`), the analysis of step 1 (`AnalysisAndSelectionOutput`) and the plan
(`TaskPlanResponse`), plus the drafts the model writes for each step.

The model writes only what needs judgement, by name: who runs the work, the tasks, estimates of
hours and tokens. The control plane resolves the names to ids and does the arithmetic (costs
from the models' prices, savings), so a plan never carries an id or a sum the model made up
(controlplane/planning/finalize.py). The plan types are shared with plan execution.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

# Bounds on what a client sends (every number the API takes is bounded, see api/routing.py).
MAX_TEXT = 20_000
MAX_LONG_TEXT = 100_000
MAX_ITEMS = 500
MAX_NAME = 300
MAX_COUNT = 2**31 - 1
MAX_HOURS = 100_000.0
MAX_TOKENS_ESTIMATE = 100_000_000
MAX_RATE = 100_000.0

Priority = Literal["low", "medium", "high", "critical"]
TaskPriority = Literal["high", "medium", "low"]
Confidence = Literal["low", "medium", "high"]
EntityType = Literal["agent", "team"]

# --- the request -------------------------------------------------------------------------------


class AgentInfo(BaseModel):
    id: str = Field(min_length=1, max_length=MAX_NAME)
    name: str = Field(min_length=1, max_length=MAX_NAME)
    model_id: str | None = Field(None, max_length=MAX_NAME)
    description: str | None = Field(None, max_length=MAX_TEXT)
    capabilities: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    status: str | None = Field(None, max_length=MAX_NAME)


class TeamInfo(BaseModel):
    id: str = Field(min_length=1, max_length=MAX_NAME)
    name: str = Field(min_length=1, max_length=MAX_NAME)
    description: str | None = Field(None, max_length=MAX_TEXT)
    agent_count: int = Field(0, ge=0, le=MAX_COUNT)
    status: str | None = Field(None, max_length=MAX_NAME)


class EnvironmentInfo(BaseModel):
    id: str = Field(min_length=1, max_length=MAX_NAME)
    name: str = Field(min_length=1, max_length=MAX_NAME)
    display_name: str | None = Field(None, max_length=MAX_NAME)
    status: str | None = Field(None, max_length=MAX_NAME)


class WorkerQueueInfo(BaseModel):
    id: str = Field(min_length=1, max_length=MAX_NAME)
    name: str = Field(min_length=1, max_length=MAX_NAME)
    environment_id: str | None = Field(None, max_length=MAX_NAME)
    status: str | None = Field(None, max_length=MAX_NAME)
    active_workers: int = Field(0, ge=0, le=MAX_COUNT)


# Keys of the official client's `context` that mean the same as a top-level field.
CONTEXT_FIELDS = (
    "priority",
    "project_id",
    "agents",
    "teams",
    "environments",
    "worker_queues",
    "refinement_feedback",
    "conversation_context",
    "previous_plan",
    "iteration",
)


class TaskPlanRequest(BaseModel):
    """What to plan. `task_description` (the official client's name) is taken for
    `description`; so is a `context` object's `agents`, `teams`, ... for fields not set at the
    top level. Lists left out (or empty) are read from the organization by the planning tools."""

    model_config = ConfigDict(extra="ignore")

    description: str = Field(
        min_length=1,
        max_length=MAX_TEXT,
        validation_alias=AliasChoices("description", "task_description"),
        description="The task to plan (also accepted as `task_description`)",
    )
    priority: Priority = "medium"
    project_id: str | None = Field(None, max_length=MAX_NAME)
    agents: list[AgentInfo] = Field(default_factory=list, max_length=MAX_ITEMS)
    teams: list[TeamInfo] = Field(default_factory=list, max_length=MAX_ITEMS)
    environments: list[EnvironmentInfo] = Field(default_factory=list, max_length=MAX_ITEMS)
    worker_queues: list[WorkerQueueInfo] = Field(default_factory=list, max_length=MAX_ITEMS)
    refinement_feedback: str | None = Field(None, max_length=MAX_TEXT)
    conversation_context: str | None = Field(None, max_length=MAX_LONG_TEXT)
    previous_plan: dict[str, Any] | None = None
    iteration: int = Field(1, ge=1, le=1000)
    planning_strategy: Literal["claude_code_sdk", "agno", "messages_api"] | None = Field(
        None, description="Accepted for compatibility: every strategy runs the same planner"
    )
    quick_mode: bool = False
    context: dict[str, Any] | None = Field(
        None, description="Extra context for the planner (the official client's `context`)"
    )

    @model_validator(mode="before")
    @classmethod
    def _lift_context(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("context"), dict):
            lifted = {
                key: value
                for key, value in data["context"].items()
                if key in CONTEXT_FIELDS and data.get(key) in (None, [])
            }
            if lifted:
                data = {**data, **lifted}
        return data


# --- step 1: analysis and selection ------------------------------------------------------------


class AnalysisDraft(BaseModel):
    """What the model answers in step 1 (tool `submit_analysis`). Names only: the schema sent to
    the model lists the organization's names as enums."""

    task_summary: str = Field(min_length=1, max_length=MAX_TEXT)
    required_capabilities: list[str] = Field(max_length=100)
    task_type: str = Field(min_length=1, max_length=MAX_NAME)
    complexity_estimate: Literal["simple", "moderate", "complex"]
    story_points_estimate: int = Field(ge=1, le=21)
    needs_multi_agent: bool
    reasoning: str = Field(max_length=MAX_TEXT)
    selected_entity_type: EntityType | None = Field(
        description="Who should run the task: an agent or a team (null when there is none)"
    )
    selected_entity_name: str | None = Field(
        max_length=MAX_NAME, description="The name of the selected agent or team"
    )
    selection_reasoning: str = Field(max_length=MAX_TEXT)
    selected_environment_name: str | None = Field(max_length=MAX_NAME)
    selected_worker_queue_name: str | None = Field(max_length=MAX_NAME)
    estimated_time_hours: float = Field(ge=0, le=MAX_HOURS)


class DiscoveredEntity(BaseModel):
    id: str
    name: str
    description: str | None = None


class AnalysisAndSelectionOutput(BaseModel):
    """Step 1's outcome (reference §7.3), names resolved to ids."""

    task_summary: str
    required_capabilities: list[str]
    task_type: str
    complexity_estimate: Literal["simple", "moderate", "complex"]
    story_points_estimate: int
    needs_multi_agent: bool
    reasoning: str
    selected_entity_type: EntityType | None = None
    selected_entity_id: str | None = None
    selected_entity_name: str | None = None
    selection_reasoning: str = ""
    selected_agent_runtime: str | None = None
    selected_agent_model_id: str | None = None
    selected_environment_id: str | None = None
    selected_environment_name: str | None = None
    selected_worker_queue_id: str | None = None
    selected_worker_queue_name: str | None = None
    estimated_cost_usd: float = 0.0
    estimated_time_hours: float = 0.0
    discovered_agents: list[DiscoveredEntity] = Field(default_factory=list)
    discovered_teams: list[DiscoveredEntity] = Field(default_factory=list)


# --- step 2: the plan --------------------------------------------------------------------------


class ComplexityDraft(BaseModel):
    story_points: int = Field(ge=1, le=21)
    confidence: Confidence
    reasoning: str = Field(max_length=MAX_TEXT)


class ToolEstimateDraft(BaseModel):
    tool_name: str = Field(min_length=1, max_length=MAX_NAME)
    estimated_calls: int = Field(ge=0, le=100_000)


class TaskDraft(BaseModel):
    id: int = Field(ge=1, le=100_000, description="Unique among the plan's tasks")
    title: str = Field(min_length=1, max_length=MAX_NAME)
    description: str = Field(max_length=MAX_TEXT)
    details: str = Field(max_length=MAX_TEXT)
    test_strategy: str = Field(max_length=MAX_TEXT)
    priority: TaskPriority
    dependencies: list[int] = Field(
        max_length=100, description="Ids of the tasks that must be done first"
    )
    skills_to_use: list[str] = Field(default_factory=list, max_length=100)
    subtasks: list[TaskDraft] = Field(default_factory=list, max_length=50)


class WorkstreamDraft(BaseModel):
    """One entry of the team breakdown: who does which tasks, and estimates for them."""

    team_name: str = Field(min_length=1, max_length=MAX_NAME)
    agent_name: str | None = Field(max_length=MAX_NAME, description="The agent doing the work")
    responsibilities: list[str] = Field(max_length=100)
    estimated_time_hours: float = Field(ge=0, le=MAX_HOURS)
    estimated_input_tokens: int = Field(ge=0, le=MAX_TOKENS_ESTIMATE)
    estimated_output_tokens: int = Field(ge=0, le=MAX_TOKENS_ESTIMATE)
    expected_tools: list[ToolEstimateDraft] = Field(max_length=100)
    tasks: list[TaskDraft] = Field(min_length=1, max_length=100)


class HumanResourceDraft(BaseModel):
    role: str = Field(min_length=1, max_length=MAX_NAME)
    hourly_rate: float = Field(ge=0, le=MAX_RATE)
    estimated_hours: float = Field(ge=0, le=MAX_HOURS)


class PlanDraft(BaseModel):
    """What the model answers in step 2 (tool `submit_plan`)."""

    title: str = Field(min_length=1, max_length=MAX_NAME)
    summary: str = Field(min_length=1, max_length=MAX_TEXT)
    complexity: ComplexityDraft
    team_breakdown: list[WorkstreamDraft] = Field(min_length=1, max_length=20)
    risks: list[str] = Field(max_length=100)
    prerequisites: list[str] = Field(max_length=100)
    success_criteria: list[str] = Field(max_length=100)
    has_questions: bool
    questions: list[str] = Field(max_length=50)
    execution_prompt: str = Field(max_length=MAX_TEXT)
    without_kubiya_resources: list[HumanResourceDraft] = Field(
        max_length=20, description="The people the work would take without agents"
    )


# --- the plan (TaskPlanResponse) ---------------------------------------------------------------


class Complexity(BaseModel):
    story_points: int
    confidence: Confidence
    reasoning: str


class ModelInfo(BaseModel):
    model_id: str
    estimated_input_tokens: int
    estimated_output_tokens: int
    cost_per_1k_input_tokens: float
    cost_per_1k_output_tokens: float
    total_model_cost: float


class ExpectedTool(BaseModel):
    tool_name: str
    estimated_calls: int
    cost_per_call: float
    total_tool_cost: float


class TaskItem(BaseModel):
    id: int
    title: str
    description: str
    details: str
    test_strategy: str
    priority: TaskPriority
    dependencies: list[int] = Field(default_factory=list)
    status: Literal["pending", "in_progress", "done"] = "pending"
    subtasks: list[TaskItem] = Field(default_factory=list)
    agent_id: str | None = None
    worker_queue_id: str | None = None
    skills_to_use: list[str] | None = None
    env_vars_to_use: list[str] | None = None
    secrets_to_use: list[str] | None = None
    knowledge_references: list[str] | None = None


class TeamBreakdownItem(BaseModel):
    team_id: str | None = None
    team_name: str
    agent_id: str | None = None
    agent_name: str | None = None
    responsibilities: list[str]
    estimated_time_hours: float
    model_info: ModelInfo | None = None
    expected_tools: list[ExpectedTool] = Field(default_factory=list)
    agent_cost: float = 0.0
    tasks: list[TaskItem]


class RecommendedExecution(BaseModel):
    entity_type: EntityType | None = None
    entity_id: str | None = None
    entity_name: str | None = None
    reasoning: str = ""
    recommended_environment_id: str | None = None
    recommended_environment_name: str | None = None
    recommended_worker_queue_id: str | None = None
    recommended_worker_queue_name: str | None = None
    execution_reasoning: str = ""


class CostItem(BaseModel):
    item: str
    cost: float


class LlmCost(BaseModel):
    model_id: str
    estimated_input_tokens: int
    estimated_output_tokens: int
    cost_per_1k_input_tokens: float
    cost_per_1k_output_tokens: float
    total_cost: float


class ToolCostCategory(BaseModel):
    category: str
    tools: list[ExpectedTool]
    category_total: float


class RuntimeCost(BaseModel):
    worker_execution_hours: float
    cost_per_hour: float
    total_cost: float


class CostEstimate(BaseModel):
    estimated_cost_usd: float
    breakdown: list[CostItem]
    llm_costs: list[LlmCost]
    tool_costs: list[ToolCostCategory]
    runtime_cost: RuntimeCost


class HumanResource(BaseModel):
    role: str
    hourly_rate: float
    estimated_hours: float
    total_cost: float


class RealizedSavings(BaseModel):
    without_kubiya_cost: float
    without_kubiya_hours: float
    without_kubiya_resources: list[HumanResource]
    with_kubiya_cost: float
    with_kubiya_hours: float
    money_saved: float
    time_saved_hours: float
    time_saved_percentage: float
    savings_summary: str


class TaskPlanResponse(BaseModel):
    title: str
    summary: str
    complexity: Complexity
    team_breakdown: list[TeamBreakdownItem]
    recommended_execution: RecommendedExecution
    cost_estimate: CostEstimate
    realized_savings: RealizedSavings
    risks: list[str] = Field(default_factory=list)
    prerequisites: list[str] = Field(default_factory=list)
    success_criteria: list[str] = Field(default_factory=list)
    has_questions: bool = False
    questions: list[str] | None = None
    execution_prompt: str | None = None
    selected_environment_id: str | None = None
    selected_environment_name: str | None = None
    selected_agent_runtime: str | None = None
    selected_agent_model_id: str | None = None

    def all_tasks(self) -> list[TaskItem]:
        return [task for item in self.team_breakdown for task in item.tasks]
