"""A small typed layer over Starlette routes.

A route is an async function `(call, [body], [query]) -> model`; its annotations say how to parse
the JSON body and the query string and what it returns. The same annotations generate the OpenAPI
document, so the docs cannot drift from the code.
"""

from __future__ import annotations

import inspect
import json
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_type_hints
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api.errors import ApiError, error_response, from_domain, json_response, not_found
from api.principal import ACCESS_DESCRIPTION, Access, Principal
from api.schemas import Deleted
from controlplane.errors import DomainError
from controlplane.executions.launch import Caller, Services
from controlplane.policy_engine import get_engine

if TYPE_CHECKING:
    import asyncpg

    from api.state import AppState

Handler = Callable[..., Awaitable[Any]]
NO_STORE = "no-store"

# Postgres integer and bigint. Every number the API takes is within a bigint's range (the check
# below): jsonb reads a float such as 1e300 back as a 301-digit integer, which a client could
# not send back. A field stored in an integer column says so with Field(ge=INT_MIN, le=INT_MAX).
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
# Deeper JSON is refused before anything recurses over it: json.loads itself raises
# RecursionError near 1,000 levels, and no document of this API comes close to 64.
MAX_JSON_DEPTH = 64
MAX_REPORTED_ERRORS = 20
JSON_WHITESPACE = " \t\n\r"


class Call:
    """Everything a route needs about the request it serves."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.path: dict[str, str] = dict(request.path_params)
        # Work for once the answer is sent (Starlette runs it after the last byte).
        self.after_answer: list[Callable[[], None]] = []

    @property
    def state(self) -> AppState:
        state: AppState = self.request.app.state.cp
        return state

    @property
    def db(self) -> asyncpg.Pool[Any]:
        return self.state.pool

    @property
    def principal(self) -> Principal:
        principal: Principal | None = self.request.scope.get("principal")
        if principal is None:  # only public routes run without one, and they do not ask
            raise ApiError(401, "Authentication required")
        return principal

    @property
    def org(self) -> str:
        return self.principal.organization_id

    async def delete_owned(self, table: str, param: str, kind: str) -> Deleted:
        """Delete the row of `table` named by path parameter `param` if this organization owns
        it; another organization's id is 404 like a missing one. `table` is code, not input."""
        ident = self.path_uuid(param, kind)
        deleted = await self.db.fetchval(
            f"DELETE FROM {table} WHERE id = $1 AND organization_id = $2 RETURNING id",
            ident,
            self.org,
        )
        if deleted is None:
            raise not_found(kind, ident)
        return Deleted(id=ident)

    def forget_queue_credentials(self) -> None:
        """After queues were deleted (with their worker keys and workers): this process reads
        the organization's queue-bound keys and worker tokens again on their next use."""
        org = self.org
        self.state.credentials.forget(
            lambda principal: (
                principal.organization_id == org and principal.worker_queue_id is not None
            )
        )

    @property
    def caller(self) -> Caller:
        """The principal as the domain sees it."""
        return Caller(self.org, self.principal.actor, self.principal.role)

    def path_uuid(self, name: str, kind: str) -> uuid.UUID:
        """A path id that is not a UUID names nothing: 404, like any missing id."""
        raw = self.path[name]
        try:
            return uuid.UUID(raw)
        except ValueError:
            raise not_found(kind, raw) from None


# What the decoder makes of a number no field can take (beyond a bigint's range, NaN,
# Infinity), so that the check below reports where it was.
_OUT_OF_RANGE = object()


def _in_range(value: float) -> bool:
    return math.isfinite(value) and BIGINT_MIN <= value <= BIGINT_MAX


def _parse_int(literal: str) -> object:
    # Length first: int() of a literal over 4,300 digits raises ValueError, not a JSON error.
    if len(literal.lstrip("-")) > len(str(BIGINT_MAX)):
        return _OUT_OF_RANGE
    value = int(literal)
    return value if _in_range(value) else _OUT_OF_RANGE


def _parse_float(literal: str) -> object:
    value = float(literal)  # 1e400 is inf
    return value if _in_range(value) else _OUT_OF_RANGE


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=lambda _: _OUT_OF_RANGE
)


def _escaped(text: str) -> str:
    """`text` as a response can carry it: lone surrogates become escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _problem(value: Any) -> tuple[str, str] | None:
    """What is wrong with a string or number, as (message, type), if anything."""
    if isinstance(value, str):
        if "\x00" in value:
            return "Strings may not contain NUL (\\u0000) characters", "string_unusable"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "Strings must be Unicode text (no lone surrogates)", "string_unusable"
    elif value is _OUT_OF_RANGE or (
        isinstance(value, int | float) and not isinstance(value, bool) and not _in_range(value)
    ):
        return f"Number out of range ({BIGINT_MIN}..{BIGINT_MAX})", "number"
    return None


def unusable_input(data: Any, location: str) -> list[dict[str, str]]:
    """Where `data` (decoded JSON or query parameters) holds what Postgres or a JSON response
    cannot carry: NUL or lone surrogates in strings and keys, numbers out of range. Raises 400
    for nesting deeper than MAX_JSON_DEPTH. One pass, about as costly as decoding the JSON."""
    errors: list[dict[str, str]] = []

    def report(path: tuple[str, ...], problem: tuple[str, str]) -> None:
        field = ".".join(_escaped(part) for part in path) or location
        errors.append(
            {"field": field, "message": problem[0], "type": problem[1], "location": location}
        )

    if not isinstance(data, dict | list):
        if (problem := _problem(data)) is not None:
            report((), problem)
        return errors
    stack: list[tuple[dict[Any, Any] | list[Any], tuple[str, ...]]] = [(data, ())]
    while stack and len(errors) < MAX_REPORTED_ERRORS:
        container, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:
            raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if (problem := _problem(key)) is not None:
                report((*path, str(key)), problem)
            if isinstance(item, dict | list):
                stack.append((item, (*path, str(key))))
            elif (problem := _problem(item)) is not None:
                report((*path, str(key)), problem)
    return errors


def refuse_unusable(data: Any, location: str) -> None:
    if errors := unusable_input(data, location):
        raise ApiError(422, "Request validation failed", details={"validation_errors": errors})


def validation_error(exc: ValidationError, location: str) -> ApiError:
    errors = [
        {
            "field": ".".join(str(part) for part in err["loc"]) or location,
            "message": err["msg"],
            "type": err["type"],
            "location": location,
        }
        for err in exc.errors(include_url=False)
    ]
    return ApiError(422, "Request validation failed", details={"validation_errors": errors})


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Handler
    status_code: int
    role: Access | None
    summary: str
    tag: str
    body_model: type[BaseModel] | None = None
    query_model: type[BaseModel] | None = None
    response_model: Any = None
    extra_responses: dict[int, str] = field(default_factory=dict)
    # The response carries a credential: never cached, never replayed for an Idempotency-Key.
    carries_secret: bool = False
    # A route without a key that a signature of its body authenticates (an inbound webhook).
    signed_body: bool = False

    def __post_init__(self) -> None:
        hints = get_type_hints(self.handler)
        params = inspect.signature(self.handler).parameters
        if "body" in params:
            self.body_model = hints["body"]
        if "query" in params:
            self.query_model = hints["query"]
        returned = hints.get("return")
        if returned is not None and returned is not Response:
            self.response_model = returned

    async def __call__(self, request: Request) -> Response:
        request.scope["route_template"] = self.path
        try:
            return await self._serve(request)
        except ApiError as error:
            return error_response(error)
        except DomainError as error:
            return error_response(from_domain(error))

    async def _serve(self, request: Request) -> Response:
        call = Call(request)
        if self.role is not None and not call.principal.allows(self.role):
            raise ApiError(
                403,
                f"This action needs {ACCESS_DESCRIPTION[self.role]}; "
                f"your credential is {_credential(call.principal)}",
            )
        for name, value in call.path.items():
            if "\x00" in value:
                raise ApiError(404, f"Path parameter '{name}' contains NUL and names nothing")
        kwargs: dict[str, Any] = {}
        if self.query_model is not None:
            kwargs["query"] = self._parse_query(request, self.query_model)
        if self.body_model is not None:
            kwargs["body"] = await self._parse_body(request, self.body_model)
        result = await self.handler(call, **kwargs)
        if isinstance(result, Response):
            response = result
        else:
            headers = {"Cache-Control": NO_STORE} if self.carries_secret else None
            response = json_response(result, self.status_code, headers)
        if call.after_answer:
            _after_answer(response, call.after_answer)
        return response

    @staticmethod
    def _parse_query(request: Request, model: type[BaseModel]) -> BaseModel:
        try:
            # Strict, where Starlette's query_params would turn bad bytes into U+FFFD.
            pairs = parse_qsl(
                request.scope["query_string"].decode("latin-1"),
                keep_blank_values=True,
                errors="strict",
            )
        except UnicodeDecodeError:
            raise ApiError(400, "Query string is not percent-encoded UTF-8") from None
        params = dict(pairs)
        refuse_unusable(params, "query")
        return _validate(model, params, "query")

    @staticmethod
    async def _parse_body(request: Request, model: type[BaseModel]) -> BaseModel:
        raw = await request.body()
        try:
            text = raw.decode("utf-8-sig")  # a leading BOM is allowed, as json.loads allowed it
        except UnicodeDecodeError:
            raise ApiError(400, "Malformed JSON body: not UTF-8 text") from None
        try:
            data = _DECODER.decode(text) if text.strip(JSON_WHITESPACE) else {}
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"Malformed JSON body: {exc}") from None
        except RecursionError:
            raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        refuse_unusable(data, "body")
        return _validate(model, data, "body")


def _validate(model: type[BaseModel], data: Any, location: str) -> BaseModel:
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, location) from None
    # Again on the result: a field may have made a number of a string ("1e400", "99...9").
    refuse_unusable(parsed.model_dump(), location)
    return parsed


def _credential(principal: Principal) -> str:
    if principal.is_worker_token:
        return "a worker token"
    if principal.role == "worker":
        return "a worker key"
    return f"a {principal.role} key"


class Router:
    """Collects the endpoints of one resource module."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        status: int = 200,
        role: Access | Literal["default"] | None = "default",
        summary: str = "",
        carries_secret: bool = False,
        responses: dict[int, str] | None = None,
        signed_body: bool = False,
    ) -> Callable[[Handler], Handler]:
        """`role` is what the caller needs (api/principal.py `Access`); by default reads need a
        viewer key and writes a member key. `role=None` marks a route that needs no key;
        `signed_body` one whose body's signature authenticates it instead.
        `responses` documents error statuses beyond those every route may answer (see
        api/openapi.py)."""
        needed: Access | None
        if role == "default":
            needed = "viewer" if method == "GET" else "member"
        else:
            needed = role

        def register(handler: Handler) -> Handler:
            doc = summary or (inspect.getdoc(handler) or "").split("\n")[0]
            self.endpoints.append(
                Endpoint(
                    method,
                    path,
                    handler,
                    status,
                    needed,
                    doc,
                    self.tag,
                    carries_secret=carries_secret,
                    extra_responses=responses or {},
                    signed_body=signed_body,
                )
            )
            return handler

        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


def starlette_routes(endpoints: list[Endpoint]) -> list[Route]:
    """One Starlette Route per path, dispatching on method, so 405 lists the allowed ones."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for endpoint in endpoints:
        methods = by_path.setdefault(endpoint.path, {})
        if endpoint.method in methods:
            raise RuntimeError(f"duplicate route {endpoint.method} {endpoint.path}")
        methods[endpoint.method] = endpoint
    routes = []
    for path, methods in by_path.items():
        routes.append(Route(path, _dispatcher(methods), methods=list(methods)))
    return routes


def _dispatcher(methods: dict[str, Endpoint]) -> Callable[[Request], Awaitable[Response]]:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await methods[method](request)

    return dispatch


def _after_answer(response: Response, work: list[Callable[[], None]]) -> None:
    def run() -> None:
        for item in work:
            item()

    async def run_after() -> None:  # async: Starlette runs a plain function in a thread
        run()

    if isinstance(response, StreamingResponse):
        run()  # a stream answers until its end, which may wait for this work
    else:
        response.background = BackgroundTask(run_after)


def launch_services(call: Call) -> Services:
    """What `start_execution` needs from this API process: an execution's workflow is started
    once the answer is sent (controlplane/executions/starting.py)."""
    settings = call.state.settings
    starts = call.state.starts
    return Services(
        temporal=call.state.temporal,
        policy_engine=get_engine(settings),
        policy_fail_open=settings.policy_fail_open,
        background=lambda pending: call.after_answer.append(lambda: starts.submit(pending)),
    )
