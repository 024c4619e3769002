"""The two model steps of planning, done the Messages API way: the model must call an output
tool (`tool_choice` names it) whose `input_schema` is the JSON schema of the step's draft model
(controlplane/planning/plan.py), narrowed with the organization's names as enums; the tool input
is then validated by that model and by the checks a schema cannot state (names that exist, task
ids that are unique, dependencies that exist and form no cycle).

`run_step` is one call. An answer that does not validate comes back with its errors; the
workflow then asks once more with the answer and the errors in the conversation (a repair).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anthropic
from pydantic import BaseModel, ValidationError

from controlplane.planning.plan import AnalysisDraft, PlanDraft, TaskDraft, TaskPlanRequest
from workflows.contracts import ModelSpec, PlanModelStep, PlanModelStepResult, StepUsage

TOOLS = {"analysis": "submit_analysis", "plan": "submit_plan"}
DRAFTS: dict[str, type[BaseModel]] = {"analysis": AnalysisDraft, "plan": PlanDraft}
# What of a previous plan or of a long context the prompt carries.
MAX_PROMPT_JSON = 20_000
MAX_REPORTED_ERRORS = 20

SYSTEM = {
    "analysis": (
        "You are the planner of an AI agent control plane. This is step 1 of 2: analyse the "
        "task and choose who should run it. Choose by exact name from the organization's agents "
        "and teams listed in the message, and the environment and worker queue to run it on "
        "(prefer active queues with active workers, in the chosen environment). Use null where "
        "the organization has nothing suitable. Answer by calling the tool submit_analysis."
    ),
    "plan": (
        "You are the planner of an AI agent control plane. This is step 2 of 2: write the plan "
        "for the task, following the analysis in the message. Split the work into workstreams "
        "(team_breakdown), each done by one of the listed agents (exact name, or null), each "
        "with concrete tasks. Task ids are integers unique across the whole plan; dependencies "
        "name the ids of tasks that must finish first, without cycles. Estimate the hours of "
        "each workstream and the tokens its agent's model will read and write. List the people "
        "(role, hourly rate in USD, hours) the work would take without agents. Do not compute "
        "costs: the control plane does. Answer by calling the tool submit_plan."
    ),
}


@dataclass
class ModelAnswer:
    tool_use_id: str
    answer: dict[str, Any] | None
    input_tokens: int
    output_tokens: int


def names(resources: dict[str, list[dict[str, Any]]], key: str) -> list[str]:
    seen: list[str] = []
    for item in resources.get(key, []):
        name = item.get("name")
        if isinstance(name, str) and name and name not in seen:
            seen.append(name)
    return seen


def _nullable_enum(prop: dict[str, Any], values: list[str]) -> None:
    """Narrow a `str | None` property to the listed values (or to null when there are none)."""
    for key in ("anyOf", "type", "maxLength", "enum"):
        prop.pop(key, None)
    if values:
        prop["anyOf"] = [{"type": "string", "enum": values}, {"type": "null"}]
    else:
        prop["type"] = "null"


def output_tool(step: str, resources: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The step's output tool: the draft model's JSON schema, names narrowed to enums."""
    schema = copy.deepcopy(DRAFTS[step].model_json_schema())
    agents, teams = names(resources, "agents"), names(resources, "teams")
    if step == "analysis":
        props = schema["properties"]
        kinds = [kind for kind, found in (("agent", agents), ("team", teams)) if found]
        prop = props["selected_entity_type"]
        prop.pop("anyOf", None)
        if kinds:
            prop["anyOf"] = [{"type": "string", "enum": kinds}, {"type": "null"}]
        else:
            prop["type"] = "null"
        entities = agents + [team for team in teams if team not in agents]
        _nullable_enum(props["selected_entity_name"], entities)
        _nullable_enum(props["selected_environment_name"], names(resources, "environments"))
        _nullable_enum(props["selected_worker_queue_name"], names(resources, "worker_queues"))
        description = "Submit the analysis of the task and the choice of who runs it."
    else:
        _nullable_enum(schema["$defs"]["WorkstreamDraft"]["properties"]["agent_name"], agents)
        description = "Submit the plan for the task."
    return {"name": TOOLS[step], "description": description, "input_schema": schema}


def _json(value: Any, limit: int = MAX_PROMPT_JSON) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + " ...(truncated)"


def prompt(step: PlanModelStep) -> str:
    request = TaskPlanRequest.model_validate(step.request)
    parts = [f"Task: {request.description}", f"Priority: {request.priority}"]
    if request.project_id:
        parts.append(f"Project: {request.project_id}")
    if request.iteration > 1 or request.refinement_feedback:
        parts.append(
            f"This is iteration {request.iteration}. Feedback on the previous plan: "
            f"{request.refinement_feedback or '(none)'}"
        )
    if request.previous_plan:
        parts.append(f"Previous plan: {_json(request.previous_plan)}")
    if request.conversation_context:
        parts.append(f"Conversation so far:\n{request.conversation_context[:MAX_PROMPT_JSON]}")
    if request.context:
        parts.append(f"Context: {_json(request.context)}")
    if request.quick_mode:
        parts.append("Quick mode: keep it short (one workstream, at most three tasks).")
    for key, title in (
        ("agents", "Agents"),
        ("teams", "Teams"),
        ("environments", "Environments"),
        ("worker_queues", "Worker queues"),
    ):
        items = step.resources.get(key, [])
        listed = "\n".join(_json(item, 2000) for item in items) or "(none)"
        parts.append(f"{title}:\n{listed}")
    if step.step == "plan" and step.analysis is not None:
        parts.append(f"Analysis (step 1): {_json(step.analysis)}")
    return "\n\n".join(parts)


def messages(step: PlanModelStep) -> list[dict[str, Any]]:
    conversation: list[dict[str, Any]] = [{"role": "user", "content": prompt(step)}]
    if step.repair is not None:
        errors = "\n".join(f"- {error}" for error in step.repair.errors)
        conversation += [
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": step.repair.tool_use_id,
                        "name": TOOLS[step.step],
                        "input": step.repair.answer,
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": step.repair.tool_use_id,
                        "is_error": True,
                        "content": f"The answer is not valid:\n{errors}\n\nCall "
                        f"{TOOLS[step.step]} again with a complete, corrected answer.",
                    }
                ],
            },
        ]
    return conversation


# --- validation ------------------------------------------------------------------------------


def _pydantic_errors(error: ValidationError) -> list[str]:
    return [
        f"{'.'.join(str(part) for part in item['loc']) or '(answer)'}: {item['msg']}"
        for item in error.errors(include_url=False)
    ]


def _named(value: str | None, known: list[str], what: str, field: str) -> list[str]:
    if value is None or value in known:
        return []
    listed = ", ".join(known[:20]) or "none"
    return [f"{field}: '{value}' is not one of the organization's {what} ({listed})"]


def check_analysis(draft: AnalysisDraft, resources: dict[str, list[dict[str, Any]]]) -> list[str]:
    agents, teams = names(resources, "agents"), names(resources, "teams")
    errors: list[str] = []
    if draft.selected_entity_name is not None:
        errors += _named(
            draft.selected_entity_name, agents + teams, "agents or teams", "selected_entity_name"
        )
    elif draft.selected_entity_type is not None:
        errors.append("selected_entity_name: name the selected agent or team (or select none)")
    errors += _named(
        draft.selected_environment_name,
        names(resources, "environments"),
        "environments",
        "selected_environment_name",
    )
    errors += _named(
        draft.selected_worker_queue_name,
        names(resources, "worker_queues"),
        "worker queues",
        "selected_worker_queue_name",
    )
    if draft.selected_worker_queue_name and draft.selected_environment_name:
        environments = {e.get("name"): e.get("id") for e in resources.get("environments", [])}
        for queue in resources.get("worker_queues", []):
            if queue.get("name") != draft.selected_worker_queue_name:
                continue
            wanted = environments.get(draft.selected_environment_name)
            if queue.get("environment_id") and wanted and queue["environment_id"] != wanted:
                errors.append(
                    f"selected_worker_queue_name: queue '{queue['name']}' is not in environment "
                    f"'{draft.selected_environment_name}'"
                )
    return errors


def _cycle(graph: dict[int, list[int]]) -> list[int] | None:
    """A dependency cycle among the tasks, if there is one."""
    state: dict[int, int] = {}  # 1: on the path, 2: done
    path: list[int] = []

    def visit(node: int) -> list[int] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if state.get(nxt) is None and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if state.get(node) is None and (found := visit(node)) is not None:
            return found
    return None


def check_plan(draft: PlanDraft, resources: dict[str, list[dict[str, Any]]]) -> list[str]:
    errors: list[str] = []
    agents = names(resources, "agents")
    tasks: list[tuple[str, TaskDraft]] = []
    for i, stream in enumerate(draft.team_breakdown):
        errors += _named(stream.agent_name, agents, "agents", f"team_breakdown.{i}.agent_name")
        tasks += [(f"team_breakdown.{i}.tasks.{j}", t) for j, t in enumerate(stream.tasks)]
    ids: dict[int, str] = {}
    for where, task in tasks:
        if task.id in ids:
            errors.append(f"{where}.id: task id {task.id} is used twice (also {ids[task.id]})")
        ids.setdefault(task.id, where)
    for where, task in tasks:
        for dependency in task.dependencies:
            if dependency == task.id:
                errors.append(f"{where}.dependencies: task {task.id} depends on itself")
            elif dependency not in ids:
                errors.append(f"{where}.dependencies: no task has id {dependency}")
    if not errors:
        cycle = _cycle({task.id: list(task.dependencies) for _, task in tasks})
        if cycle is not None:
            shown = " -> ".join(str(task_id) for task_id in cycle)
            errors.append(f"dependencies: tasks depend on each other in a cycle ({shown})")
    return errors


def validate(
    step: str, answer: dict[str, Any] | None, resources: dict[str, list[dict[str, Any]]]
) -> tuple[dict[str, Any] | None, list[str]]:
    """The validated draft (as JSON), or the errors that make `answer` unusable."""
    if answer is None:
        return None, [f"no call of {TOOLS[step]}: the answer must be that tool call"]
    try:
        draft = DRAFTS[step].model_validate(answer)
    except ValidationError as error:
        return None, _pydantic_errors(error)[:MAX_REPORTED_ERRORS]
    if isinstance(draft, AnalysisDraft):
        errors = check_analysis(draft, resources)
    else:
        assert isinstance(draft, PlanDraft)
        errors = check_plan(draft, resources)
    if errors:
        return None, errors[:MAX_REPORTED_ERRORS]
    return draft.model_dump(mode="json"), []


# --- the call --------------------------------------------------------------------------------


def cost_of(model: ModelSpec, input_tokens: int, output_tokens: int) -> float:
    return round(
        (input_tokens * model.input_per_million + output_tokens * model.output_per_million) / 1e6,
        8,
    )


async def call_output_tool(
    client: anthropic.AsyncAnthropic,
    *,
    model: str,
    system: str,
    conversation: list[dict[str, Any]],
    tool: dict[str, Any],
    max_tokens: int,
    on_event: Callable[[], Awaitable[None]] | None = None,
) -> ModelAnswer:
    """One streamed Messages call forced to call `tool`; the tool input it sent, if any."""
    async with client.messages.stream(
        model=model,
        max_tokens=max_tokens,
        system=system,
        messages=conversation,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": tool["name"]},
    ) as stream:
        async for _ in stream:
            if on_event is not None:
                await on_event()
        final = await stream.get_final_message()
    tool_use = next(
        (b for b in final.content if b.type == "tool_use" and b.name == tool["name"]), None
    )
    answer = tool_use.input if tool_use is not None and isinstance(tool_use.input, dict) else None
    return ModelAnswer(
        tool_use_id=tool_use.id if tool_use is not None else "toolu_missing",
        answer=answer,
        input_tokens=final.usage.input_tokens,
        output_tokens=final.usage.output_tokens,
    )


async def run_step(
    client: anthropic.AsyncAnthropic,
    step: PlanModelStep,
    on_event: Callable[[], Awaitable[None]] | None = None,
) -> PlanModelStepResult:
    """One model call of `step` (a repair call when `step.repair` is set), validated."""
    answered = await call_output_tool(
        client,
        model=step.model.api_model,
        system=SYSTEM[step.step],
        conversation=messages(step),
        tool=output_tool(step.step, step.resources),
        max_tokens=step.max_tokens,
        on_event=on_event,
    )
    output, errors = validate(step.step, answered.answer, step.resources)
    usage = StepUsage(
        step=step.step,
        model=step.model.value,
        calls=1,
        input_tokens=answered.input_tokens,
        output_tokens=answered.output_tokens,
        cost_usd=cost_of(step.model, answered.input_tokens, answered.output_tokens),
    )
    return PlanModelStepResult(answered.tool_use_id, answered.answer, output, errors, usage)
