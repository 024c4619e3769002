"""From the model's drafts to the plan: names resolved to ids (from the resources the planner
saw: the request's lists or the organization's own), and every sum computed here. Model costs
come from the catalogue's prices of the model each agent runs (the organization's default model
when it names none); tools and worker hours carry no price in the catalogue (tools run on your
own workers), so they are listed at 0."""

from __future__ import annotations

from typing import Any

from controlplane.db import Queryable
from controlplane.models import ModelInfo as CatalogueModel
from controlplane.models import default_model_row, model_info, resolve_model
from controlplane.planning.plan import (
    AnalysisAndSelectionOutput,
    AnalysisDraft,
    Complexity,
    CostEstimate,
    CostItem,
    DiscoveredEntity,
    ExpectedTool,
    HumanResource,
    LlmCost,
    ModelInfo,
    PlanDraft,
    RealizedSavings,
    RecommendedExecution,
    RuntimeCost,
    TaskDraft,
    TaskItem,
    TaskPlanResponse,
    TeamBreakdownItem,
    ToolCostCategory,
)

TOOL_COST_PER_CALL = 0.0
WORKER_COST_PER_HOUR = 0.0


def _money(value: float) -> float:
    return round(value, 6)


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in items:
        found.setdefault(str(item.get("name")), item)
    return found


class Prices:
    """Catalogue prices by model id, looked up once each."""

    def __init__(self, db: Queryable, org: str) -> None:
        self.db = db
        self.org = org
        self._found: dict[str | None, CatalogueModel | None] = {}

    async def of(self, model_id: str | None) -> CatalogueModel | None:
        if model_id not in self._found:
            if model_id:
                self._found[model_id] = await resolve_model(self.db, self.org, model_id)
            else:
                row = await default_model_row(self.db, self.org)
                self._found[model_id] = model_info(row) if row is not None else None
        return self._found[model_id]


def resolve_analysis(
    draft: AnalysisDraft, resources: dict[str, list[dict[str, Any]]]
) -> AnalysisAndSelectionOutput:
    agents, teams = _by_name(resources.get("agents", [])), _by_name(resources.get("teams", []))
    environments = _by_name(resources.get("environments", []))
    queues = _by_name(resources.get("worker_queues", []))
    name = draft.selected_entity_name
    entity: dict[str, Any] | None = None
    kind = None
    if name is not None:
        # The name decides which kind it is; the stated kind breaks a tie.
        if name in agents and (draft.selected_entity_type != "team" or name not in teams):
            entity, kind = agents[name], "agent"
        elif name in teams:
            entity, kind = teams[name], "team"
    environment = environments.get(draft.selected_environment_name or "")
    queue = queues.get(draft.selected_worker_queue_name or "")
    return AnalysisAndSelectionOutput(
        **draft.model_dump(
            exclude={
                "selected_entity_type",
                "selected_entity_name",
                "selected_environment_name",
                "selected_worker_queue_name",
            }
        ),
        selected_entity_type=kind,
        selected_entity_id=str(entity["id"]) if entity else None,
        selected_entity_name=entity["name"] if entity else None,
        selected_agent_runtime=entity.get("runtime") if entity else None,
        selected_agent_model_id=entity.get("model_id") if entity else None,
        selected_environment_id=str(environment["id"]) if environment else None,
        selected_environment_name=environment["name"] if environment else None,
        selected_worker_queue_id=str(queue["id"]) if queue else None,
        selected_worker_queue_name=queue["name"] if queue else None,
        discovered_agents=[
            DiscoveredEntity(id=str(a["id"]), name=a["name"], description=a.get("description"))
            for a in resources.get("agents", [])
        ],
        discovered_teams=[
            DiscoveredEntity(id=str(t["id"]), name=t["name"], description=t.get("description"))
            for t in resources.get("teams", [])
        ],
    )


def _task(draft: TaskDraft, agent_id: str | None, queue_id: str | None) -> TaskItem:
    return TaskItem(
        id=draft.id,
        title=draft.title,
        description=draft.description,
        details=draft.details,
        test_strategy=draft.test_strategy,
        priority=draft.priority,
        dependencies=list(draft.dependencies),
        subtasks=[_task(sub, agent_id, queue_id) for sub in draft.subtasks],
        agent_id=agent_id,
        worker_queue_id=queue_id,
        skills_to_use=list(draft.skills_to_use) or None,
    )


async def build_plan(
    db: Queryable,
    org: str,
    analysis: AnalysisAndSelectionOutput,
    draft: PlanDraft,
    resources: dict[str, list[dict[str, Any]]],
) -> TaskPlanResponse:
    agents, teams = _by_name(resources.get("agents", [])), _by_name(resources.get("teams", []))
    prices = Prices(db, org)
    breakdown: list[TeamBreakdownItem] = []
    costs: list[CostItem] = []
    llm: dict[str, LlmCost] = {}
    all_tools: list[ExpectedTool] = []
    for stream in draft.team_breakdown:
        agent = agents.get(stream.agent_name or "")
        team = teams.get(stream.team_name)
        if team is None and agent is not None and agent.get("team_id"):
            team = {"id": agent["team_id"], "name": agent.get("team_name") or stream.team_name}
        wanted = (agent or {}).get("model_id") or (team or {}).get("model_id")
        model = await prices.of(wanted)
        model_id = model.value if model is not None else (wanted or "unknown")
        per_1k_in = model.pricing.input_per_million / 1000 if model and model.pricing else 0.0
        per_1k_out = model.pricing.output_per_million / 1000 if model and model.pricing else 0.0
        model_cost = _money(
            stream.estimated_input_tokens * per_1k_in / 1000
            + stream.estimated_output_tokens * per_1k_out / 1000
        )
        tools = [
            ExpectedTool(
                tool_name=tool.tool_name,
                estimated_calls=tool.estimated_calls,
                cost_per_call=TOOL_COST_PER_CALL,
                total_tool_cost=_money(tool.estimated_calls * TOOL_COST_PER_CALL),
            )
            for tool in stream.expected_tools
        ]
        all_tools += tools
        agent_cost = _money(model_cost + sum(tool.total_tool_cost for tool in tools))
        agent_id = str(agent["id"]) if agent else None
        breakdown.append(
            TeamBreakdownItem(
                team_id=str(team["id"]) if team else None,
                team_name=team["name"] if team else stream.team_name,
                agent_id=agent_id,
                agent_name=agent["name"] if agent else None,
                responsibilities=stream.responsibilities,
                estimated_time_hours=stream.estimated_time_hours,
                model_info=ModelInfo(
                    model_id=model_id,
                    estimated_input_tokens=stream.estimated_input_tokens,
                    estimated_output_tokens=stream.estimated_output_tokens,
                    cost_per_1k_input_tokens=per_1k_in,
                    cost_per_1k_output_tokens=per_1k_out,
                    total_model_cost=model_cost,
                ),
                expected_tools=tools,
                agent_cost=agent_cost,
                tasks=[
                    _task(task, agent_id, analysis.selected_worker_queue_id)
                    for task in stream.tasks
                ],
            )
        )
        who = (agent or {}).get("name") or stream.team_name
        priced = "" if model and model.pricing else ", no price in the catalogue"
        costs.append(CostItem(item=f"{who} ({model_id}{priced})", cost=agent_cost))
        line = llm.get(model_id) or LlmCost(
            model_id=model_id,
            estimated_input_tokens=0,
            estimated_output_tokens=0,
            cost_per_1k_input_tokens=per_1k_in,
            cost_per_1k_output_tokens=per_1k_out,
            total_cost=0.0,
        )
        line.estimated_input_tokens += stream.estimated_input_tokens
        line.estimated_output_tokens += stream.estimated_output_tokens
        line.total_cost = _money(line.total_cost + model_cost)
        llm[model_id] = line

    hours = sum(item.estimated_time_hours for item in breakdown)
    runtime = RuntimeCost(
        worker_execution_hours=hours,
        cost_per_hour=WORKER_COST_PER_HOUR,
        total_cost=_money(hours * WORKER_COST_PER_HOUR),
    )
    total = _money(sum(item.agent_cost for item in breakdown) + runtime.total_cost)
    tool_costs = (
        [
            ToolCostCategory(
                category="tools",
                tools=all_tools,
                category_total=_money(sum(t.total_tool_cost for t in all_tools)),
            )
        ]
        if all_tools
        else []
    )
    people = [
        HumanResource(
            role=person.role,
            hourly_rate=person.hourly_rate,
            estimated_hours=person.estimated_hours,
            total_cost=_money(person.hourly_rate * person.estimated_hours),
        )
        for person in draft.without_kubiya_resources
    ]
    without_cost = _money(sum(person.total_cost for person in people))
    without_hours = sum(person.estimated_hours for person in people)
    saved_hours = without_hours - hours
    savings = RealizedSavings(
        without_kubiya_cost=without_cost,
        without_kubiya_hours=without_hours,
        without_kubiya_resources=people,
        with_kubiya_cost=total,
        with_kubiya_hours=hours,
        money_saved=_money(without_cost - total),
        time_saved_hours=saved_hours,
        time_saved_percentage=round(saved_hours / without_hours * 100, 2) if without_hours else 0.0,
        savings_summary=(
            f"Without agents: about {without_hours:g} h of work costing ${without_cost:,.2f}; "
            f"with agents: about {hours:g} h and ${total:,.4f} in model costs."
        ),
    )
    analysis.estimated_cost_usd = total
    queue_name = analysis.selected_worker_queue_name
    environment_name = analysis.selected_environment_name
    where = (
        f"Run on worker queue '{queue_name}'"
        + (f" in environment '{environment_name}'" if environment_name else "")
        + "."
        if queue_name
        else "No worker queue was chosen: pick one before executing the plan."
    )
    return TaskPlanResponse(
        title=draft.title,
        summary=draft.summary,
        complexity=Complexity(**draft.complexity.model_dump()),
        team_breakdown=breakdown,
        recommended_execution=RecommendedExecution(
            entity_type=analysis.selected_entity_type,
            entity_id=analysis.selected_entity_id,
            entity_name=analysis.selected_entity_name,
            reasoning=analysis.selection_reasoning,
            recommended_environment_id=analysis.selected_environment_id,
            recommended_environment_name=environment_name,
            recommended_worker_queue_id=analysis.selected_worker_queue_id,
            recommended_worker_queue_name=queue_name,
            execution_reasoning=where,
        ),
        cost_estimate=CostEstimate(
            estimated_cost_usd=total,
            breakdown=costs,
            llm_costs=list(llm.values()),
            tool_costs=tool_costs,
            runtime_cost=runtime,
        ),
        realized_savings=savings,
        risks=draft.risks,
        prerequisites=draft.prerequisites,
        success_criteria=draft.success_criteria,
        has_questions=draft.has_questions,
        questions=draft.questions if draft.has_questions or draft.questions else None,
        execution_prompt=draft.execution_prompt or None,
        selected_environment_id=analysis.selected_environment_id,
        selected_environment_name=environment_name,
        selected_agent_runtime=analysis.selected_agent_runtime,
        selected_agent_model_id=analysis.selected_agent_model_id,
    )
