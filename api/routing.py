"""A small typed layer over Starlette routes.

A route is an async function `(call, [body], [query]) -> model`; its annotations say how to parse
the JSON body and the query string and what it returns. The same annotations generate the OpenAPI
document, so the docs cannot drift from the code.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_type_hints

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.errors import ApiError, error_response, from_domain, not_found
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


class Call:
    """Everything a route needs about the request it serves."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.path: dict[str, str] = dict(request.path_params)

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
        kwargs: dict[str, Any] = {}
        if self.query_model is not None:
            try:
                kwargs["query"] = self.query_model.model_validate(dict(request.query_params))
            except ValidationError as exc:
                raise validation_error(exc, "query") from None
        if self.body_model is not None:
            kwargs["body"] = await self._parse_body(request, self.body_model)
        result = await self.handler(call, **kwargs)
        if isinstance(result, Response):
            return result
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        headers = {"Cache-Control": NO_STORE} if self.carries_secret else None
        return JSONResponse(result, status_code=self.status_code, headers=headers)

    @staticmethod
    async def _parse_body(request: Request, model: type[BaseModel]) -> BaseModel:
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Malformed JSON body: {exc}") from None
        if b"\\u0000" in raw:
            # Postgres text cannot hold NUL; refuse it here rather than fail on insert.
            raise ApiError(422, "Strings may not contain NUL (\\u0000) characters")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc, "body") from None


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
    ) -> Callable[[Handler], Handler]:
        """`role` is what the caller needs (api/principal.py `Access`); by default reads need a
        viewer key and writes a member key. `role=None` marks a route that needs no key."""
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


def launch_services(call: Call) -> Services:
    """What `start_execution` needs from this API process."""
    settings = call.state.settings
    return Services(
        temporal=call.state.temporal,
        policy_engine=get_engine(settings),
        policy_fail_open=settings.policy_fail_open,
    )
