"""Rego policy evaluation: in process with regorus (the default), or on an OPA server over its
REST API when `OPA_URL` is set.

A policy follows the Kubiya convention: `default allow := false` plus `violations` messages (a
set, or `violations[msg]` in Rego v0). Each policy is evaluated on its own, as `data.<package>`:

- `allow`: when the policy defines the rule, the policy allows only if it is `true` (undefined,
  like false, denies); a policy without an `allow` rule allows unless it reports violations.
- `violations` and `deny`: messages (strings, or objects with `msg`/`message`); any message
  denies. A boolean `deny` that is true denies with a generic message.

An engine error (bad input data, a runtime error inside the policy, OPA unreachable) is reported
as an error on that policy's result, never as a deny: `decide()` turns errors into a deny (fail
closed) or an allow (fail open) as configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import uuid
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Generic, TypeVar

import httpx
import regorus  # type: ignore[import-untyped]

from controlplane.settings import Settings

DECISION_RULES = ("allow", "violations", "deny")
_UNDEFINED = "<undefined>"  # what regorus answers for a rule that has no value
_LOCATION = re.compile(r"-->\s*(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+)")
_PACKAGE = re.compile(r"^(?P<lead>[ \t]*)package[ \t]+(?P<path>[^\s#]+)", re.MULTILINE)
_CACHE_SIZE = 4096


class RegoError(Exception):
    """The engine refused a policy's text; `message` is the engine's own, without backtrace."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True)
class PolicySource:
    """One policy as stored: `(id, version)` names a text that never changes."""

    id: str
    version: int
    content: str
    name: str = ""


@dataclass
class PolicyResult:
    allow: bool
    violations: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Validation:
    errors: list[str]
    warnings: list[str]

    @property
    def valid(self) -> bool:
        return not self.errors


@dataclass
class Decision:
    """Several policies' results folded into one answer."""

    allowed: bool
    violations: list[str]
    engine_error: str | None
    results: dict[str, PolicyResult]


def decide(
    policies: Sequence[PolicySource], results: Mapping[str, PolicyResult], *, fail_open: bool
) -> Decision:
    """Allowed when every policy allows. A policy whose evaluation failed counts as a deny with
    "Policy engine error: ..." unless `fail_open`, where it counts as an allow; the error is
    reported in `engine_error` either way."""
    violations: list[str] = []
    errors: list[str] = []
    for policy in policies:
        result = results[policy.id]
        label = policy.name or policy.id
        if result.error is not None:
            errors.append(f"{label}: {result.error}")
        elif not result.allow:
            violations.extend(result.violations or [f"Denied by policy '{label}'"])
    engine_error = "; ".join(errors) or None
    if engine_error is not None and not fail_open:
        violations.append(f"Policy engine error: {engine_error}")
    return Decision(
        allowed=not violations,
        violations=violations,
        engine_error=engine_error,
        results=dict(results),
    )


def _engine_message(exc: BaseException) -> RegoError:
    """regorus errors carry a source excerpt and, with RUST_BACKTRACE set, a Rust backtrace:
    keep `file:line:col: message`."""
    text = str(exc).split("\n\nStack backtrace:", 1)[0].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    location = _LOCATION.search(text)
    message = next(
        (line.split("error:", 1)[1].strip() for line in lines if line.startswith("error:")), None
    )
    if location is None or message is None:
        return RegoError(text or type(exc).__name__)
    line, col = int(location["line"]), int(location["col"])
    return RegoError(f"{location['file']}:{line}:{col}: {message}", line, col)


@dataclass(frozen=True)
class CompiledPolicy:
    engine: Any  # regorus.Engine, cloned for each evaluation
    package: str  # "data.kubiya.tools"
    rules: frozenset[str]  # the top-level rule names the policy defines
    dialect: str  # "v1" or "v0"


def _rule_names(engine: Any) -> frozenset[str]:
    names: set[str] = set()
    for module in json.loads(engine.get_ast_as_json()):
        for rule in module["ast"]["rules"]:
            ((kind, body),) = rule.items()
            ref = body.get("refr") if kind == "Default" else None
            if ref is None and isinstance(body.get("head"), dict):
                ((_, head),) = body["head"].items()
                ref = head.get("refr")
            while isinstance(ref, dict):
                ((node, inner),) = ref.items()
                if node == "Var":
                    names.add(str(inner["value"]))
                    break
                ref = inner.get("refr")
    return frozenset(names)


def compile_rego(rego: str, filename: str = "policy.rego") -> CompiledPolicy:
    """Parse and compile one policy. Rego v1 first (what OPA 1.x speaks); a policy that only
    parses as Rego v0 (Kubiya's samples: `violations[msg] { ... }`) is accepted as v0. When
    neither parses, the error of the dialect that got further into the text is raised."""
    failures: list[RegoError] = []
    for dialect in ("v1", "v0"):
        engine = regorus.Engine()
        if dialect == "v0":
            engine.set_rego_v0(True)
        try:
            engine.add_policy(filename, rego)
        except Exception as exc:
            failures.append(_engine_message(exc))
            continue
        packages = engine.get_packages()
        if len(packages) != 1:
            raise RegoError(f"{filename}: expected one package, found {len(packages)}")
        return CompiledPolicy(engine, str(packages[0]), _rule_names(engine), dialect)
    raise max(failures, key=lambda e: (e.line, e.column, -failures.index(e)))


def _messages(value: Any, rule: str) -> list[str]:
    """A `violations`/`deny` value as a list of messages."""
    if value is None or value is False or value == _UNDEFINED:
        return []
    if value is True:
        return [f"Denied by rule '{rule}'"]
    if isinstance(value, dict) and not ({"msg", "message"} & set(value)):
        value = list(value.values())
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        text = item.get("msg", item.get("message")) if isinstance(item, dict) else item
        if isinstance(text, str):
            out.append(text)
        else:
            out.append(json.dumps(item, sort_keys=True))
    return out


def interpret(document: Mapping[str, Any], rules: frozenset[str] | None) -> PolicyResult:
    """A policy's decision from its rules' values. `rules` names the rules the policy defines
    (None when unknown: then a missing `allow` counts as not defined)."""
    has_allow = "allow" in (rules if rules is not None else document)
    allow = document.get("allow") is True if has_allow else True
    violations = [
        message
        for rule in ("violations", "deny")
        for message in _messages(document.get(rule), rule)
    ]
    return PolicyResult(allow=allow and not violations, violations=violations)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def drop(self, match: Callable[[K, V], bool]) -> None:
        for key in [key for key, value in self.items.items() if match(key, value)]:
            del self.items[key]


@dataclass
class _Compiled:
    """A policy text compiled (or the engine's refusal of it), and the policies that had it."""

    result: CompiledPolicy | RegoError
    policy_ids: set[str] = field(default_factory=set)


class PolicyEngine(ABC):
    kind: ClassVar[str]

    def __init__(self) -> None:
        # regorus engines may only be used on the thread that made them (pyo3 "unsendable"),
        # so each thread keeps its own cache; an API process serves from one thread anyway.
        self._local = threading.local()

    @property
    def _compiled(self) -> _Lru[str, _Compiled]:
        """Policy text -> the text compiled. Keyed by the text itself, so a policy whose text
        is the same as another's (or a version's, after a revert) compiles once, and a cached
        result can never belong to another text."""
        cache: _Lru[str, _Compiled] | None = getattr(self._local, "compiled", None)
        if cache is None:
            cache = self._local.compiled = _Lru(_CACHE_SIZE)
        return cache

    def compiled(self, policy: PolicySource) -> CompiledPolicy:
        """The policy's text compiled, from the cache when this thread compiled it before."""
        entry = self._compiled.get(policy.content)
        if entry is None:
            try:
                entry = _Compiled(compile_rego(policy.content))
            except RegoError as exc:
                entry = _Compiled(exc)
            self._compiled.put(policy.content, entry)
        entry.policy_ids.add(policy.id)
        if isinstance(entry.result, RegoError):
            raise entry.result
        return entry.result

    @staticmethod
    def warnings(rego: str) -> list[str]:
        try:
            compiled = compile_rego(rego)
        except RegoError:
            return []
        found: list[str] = []
        if not compiled.rules & set(DECISION_RULES):
            found.append(
                "The policy defines none of allow, violations or deny: it allows everything"
            )
        if compiled.dialect == "v0":
            found.append(
                "Rego v0 syntax: OPA 1.x servers need `import rego.v1` style "
                "(`if`, `contains`) or their v0-compatible mode"
            )
        return found

    @abstractmethod
    async def validate(self, rego: str) -> Validation:
        """The engine's errors for this text (empty when it compiles) and advisory warnings."""

    @abstractmethod
    async def evaluate(
        self, policies: Sequence[PolicySource], input: Mapping[str, Any]
    ) -> dict[str, PolicyResult]:
        """Each policy's result against `input`, by policy id."""

    @abstractmethod
    async def health(self) -> tuple[bool, str]:
        """Whether the engine answers, and a word on its state."""

    async def forget(self, policy_id: str) -> None:
        """A policy was deleted: drop what the engine holds for it (texts it had)."""
        self._compiled.drop(lambda _, entry: policy_id in entry.policy_ids)


class RegorusEngine(PolicyEngine):
    """In process: one compiled engine per policy text, cloned per evaluation (a clone costs
    under a microsecond; an evaluation about ten)."""

    kind = "regorus"

    async def validate(self, rego: str) -> Validation:
        try:
            compile_rego(rego)
        except RegoError as exc:
            return Validation(errors=[exc.message], warnings=[])
        return Validation(errors=[], warnings=self.warnings(rego))

    async def evaluate(
        self, policies: Sequence[PolicySource], input: Mapping[str, Any]
    ) -> dict[str, PolicyResult]:
        try:
            input_json = json.dumps(input)
        except (TypeError, ValueError) as exc:
            error = f"input is not JSON: {exc}"
            return {policy.id: PolicyResult(allow=False, error=error) for policy in policies}
        return {policy.id: self._evaluate_one(policy, input_json) for policy in policies}

    def _evaluate_one(self, policy: PolicySource, input_json: str) -> PolicyResult:
        try:
            compiled = self.compiled(policy)
            engine = compiled.engine.clone()
            engine.set_input_json(input_json)
            document = {
                rule: json.loads(engine.eval_rule_as_json(f"{compiled.package}.{rule}"))
                for rule in DECISION_RULES
                if rule in compiled.rules
            }
        except RegoError as exc:
            return PolicyResult(allow=False, error=exc.message)
        except Exception as exc:
            return PolicyResult(allow=False, error=_engine_message(exc).message)
        return interpret(document, compiled.rules)

    async def health(self) -> tuple[bool, str]:
        return True, "in process"


def _opa_package(rego: str, package: str) -> str:
    """The text with its package renamed, so policies of every organization can share one OPA
    without their rules merging (OPA merges modules of the same package)."""
    return _PACKAGE.sub(lambda m: f"{m['lead']}package {package}", rego, count=1)


class OpaEngine(PolicyEngine):
    """An OPA server over its REST API: each policy is uploaded once per version
    (`PUT /v1/policies/{id}`) under its own package, then queried with
    `POST /v1/data/{package path}` and `{"input": ...}`."""

    kind = "opa"

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._uploaded: dict[str, int] = {}  # policy id -> version OPA holds
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._clients = weakref.WeakKeyDictionary()

    def _client(self) -> httpx.AsyncClient:
        # httpx clients belong to the event loop they were made in.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout)
            self._clients[loop] = client
        return client

    @staticmethod
    def _module_id(policy_id: str) -> str:
        return f"controlplane-{policy_id}"

    @staticmethod
    def _package(policy_id: str) -> str:
        return f"controlplane.p_{policy_id.replace('-', '')}"

    @staticmethod
    def _error_text(response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return f"OPA answered {response.status_code}: {response.text[:500]}"
        messages = [
            f"{e.get('location', {}).get('row', '?')}:{e.get('location', {}).get('col', '?')}: "
            f"{e.get('message', '')}"
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        return "; ".join(messages) or str(body.get("message") or body)

    async def _put(self, module_id: str, text: str) -> str | None:
        """Upload a module; the OPA error text when it refuses it."""
        response = await self._client().put(
            f"/v1/policies/{module_id}",
            content=text.encode(),
            headers={"Content-Type": "text/plain"},
        )
        if response.status_code == 200:
            return None
        return self._error_text(response)

    async def validate(self, rego: str) -> Validation:
        scratch = f"validate-{uuid.uuid4().hex}"
        text = _opa_package(rego, f"controlplane.{scratch.replace('-', '_')}")
        module_id = self._module_id(scratch)
        try:
            refused = await self._put(module_id, text)
            if refused is None:
                await self._client().delete(f"/v1/policies/{module_id}")
        except httpx.HTTPError as exc:
            return Validation(errors=[f"OPA unreachable at {self.url}: {exc!r}"], warnings=[])
        if refused is not None:
            return Validation(errors=[refused], warnings=[])
        return Validation(errors=[], warnings=self.warnings(rego))

    async def evaluate(
        self, policies: Sequence[PolicySource], input: Mapping[str, Any]
    ) -> dict[str, PolicyResult]:
        results = await asyncio.gather(*(self._evaluate_one(p, input) for p in policies))
        return {policy.id: result for policy, result in zip(policies, results, strict=True)}

    async def _evaluate_one(self, policy: PolicySource, input: Mapping[str, Any]) -> PolicyResult:
        try:
            rules: frozenset[str] | None = self.compiled(policy).rules
        except RegoError:
            rules = None  # OPA may accept what regorus does not; trust OPA's document then
        path = self._package(policy.id).replace(".", "/")
        try:
            for attempt in range(2):
                if self._uploaded.get(policy.id) != policy.version or attempt:
                    refused = await self._put(
                        self._module_id(policy.id),
                        _opa_package(policy.content, self._package(policy.id)),
                    )
                    if refused is not None:
                        return PolicyResult(allow=False, error=f"OPA refused the policy: {refused}")
                    self._uploaded[policy.id] = policy.version
                response = await self._client().post(f"/v1/data/{path}", json={"input": input})
                if response.status_code != 200:
                    return PolicyResult(allow=False, error=f"OPA: {self._error_text(response)}")
                body = response.json()
                if "result" in body and isinstance(body["result"], dict):
                    return interpret(body["result"], rules)
                # No document: OPA lost the module (a restart); upload it again, once.
        except httpx.HTTPError as exc:
            return PolicyResult(allow=False, error=f"OPA unreachable at {self.url}: {exc!r}")
        except (TypeError, ValueError) as exc:
            return PolicyResult(allow=False, error=f"OPA: {exc}")
        return PolicyResult(allow=False, error="OPA holds no document for the policy")

    async def health(self) -> tuple[bool, str]:
        try:
            response = await self._client().get("/health")
        except httpx.HTTPError as exc:
            return False, f"unreachable: {exc!r}"
        if response.status_code == 200:
            return True, "healthy"
        return False, f"answered {response.status_code}"

    async def forget(self, policy_id: str) -> None:
        await super().forget(policy_id)
        self._uploaded.pop(policy_id, None)
        # An unreachable OPA lost it anyway, and nothing resolves a deleted policy.
        with contextlib.suppress(httpx.HTTPError):
            await self._client().delete(f"/v1/policies/{self._module_id(policy_id)}")


@lru_cache(maxsize=16)
def _engine_for(opa_url: str | None) -> PolicyEngine:
    return OpaEngine(opa_url) if opa_url else RegorusEngine()


def get_engine(settings: Settings) -> PolicyEngine:
    """The process's engine for these settings: one per OPA URL, so its caches last."""
    return _engine_for(settings.opa_url)
