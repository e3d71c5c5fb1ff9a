"""The API's routes over a World: routing, authentication, namespace scoping, and the error each rule gives.

Kept apart from the socket plumbing in server.py so the rules read as a list and run without a network.
"""

import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from .batch_listing import list_batches, parse_batch_request
from .bucket_listing import list_buckets
from .errors import ApiError, ValidationFailed, field_error
from .namespace_listing import list_namespaces
from .profile import DOCUMENTED, ApiProfile
from .render import task_json
from .task_listing import TaskListings
from .world import World


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the routes need it; header names are lower-cased."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    raw_body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """A JSON response."""

    status: int
    payload: object
    headers: Mapping[str, str] = field(default_factory=dict)


_Handler = Callable[[Request, re.Match[str]], Response]

_UNAUTHORIZED: Final = {"WWW-Authenticate": "Bearer"}


class Routes:
    """The simulated endpoints; `handle` never raises for a client's mistake, it answers it."""

    def __init__(
        self,
        world: World,
        api_key: str,
        *,
        cursor_pagination: bool,
        profile: ApiProfile = DOCUMENTED,
    ) -> None:
        self._world = world
        self._api_key = api_key.encode()
        self._cursor_pagination = cursor_pagination
        self.profile = profile
        self.task_listings = TaskListings(world)
        # The routes the exporter calls (exporter/api.py), each behind the API key; (method, path pattern,
        # handler), the first full match wins, as in FastAPI.
        self._table: tuple[tuple[str, re.Pattern[str], _Handler], ...] = (
            ("POST", re.compile(r"/v1/tasks/list"), self._list_tasks),
            ("GET", re.compile(r"/v1/tasks/(?P<task_id>[^/]+)"), self._get_task),
            ("POST", re.compile(r"/v1/namespaces/list"), self._list_namespaces),
            ("POST", re.compile(r"/v1/buckets/list"), self._list_buckets),
            ("POST", re.compile(r"/v1/buckets/(?P<bucket>[^/]+)/batches/list"), self._list_bucket_batches),
        )
        if profile.batches_list:  # else a 404 like any unknown path, as in the 0.81 spec
            self._table += (("POST", re.compile(r"/v1/batches/list"), self._list_batches),)

    def handle(self, request: Request) -> Response:
        """Answer one request, errors included, in the real API's shapes."""
        try:
            return self._dispatch(request)
        except ApiError as exc:
            return Response(exc.status, exc.body(), exc.headers)
        except ValidationFailed as exc:
            return Response(422, exc.body())

    def _dispatch(self, request: Request) -> Response:
        allowed: list[str] = []
        for method, pattern, handler in self._table:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            self._authenticate(request.headers)
            return handler(request, match)
        if allowed:
            raise ApiError(
                405, "MethodNotAllowedError", "Method Not Allowed", headers={"Allow": ", ".join(allowed)}
            )
        raise ApiError(404, "NotFoundError", "Not Found", {"path": request.path})

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        value = headers.get("authorization")
        if not value:
            msg = "Missing Authorization header: send 'Authorization: Bearer <api key>'"
            raise ApiError(401, "UnauthorizedError", msg, headers=_UNAUTHORIZED)
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._api_key):
            raise ApiError(401, "UnauthorizedError", "Invalid API key", headers=_UNAUTHORIZED)

    def _scope(self, headers: Mapping[str, str]) -> str | None:
        """The namespace id a task route is limited to, or None for the whole organisation.

        Whether the real task routes honour X-Namespace is an open question; the profile picks an answer,
        and when they do not, the header is ignored like any undeclared header.
        """
        ref = headers.get("x-namespace")
        if not self.profile.header_honoured or not ref:
            return None
        return self._namespace_id(ref)

    def _namespace_id(self, ref: str) -> str:
        """The id of the namespace a name or id refers to; 404 when there is none."""
        namespace = self._world.namespace(ref)
        if namespace is None:
            raise ApiError(
                404, "NotFoundError", f"Namespace '{ref}' not found", {"resource": "namespace", "id": ref}
            )
        return namespace.namespace_id

    def _required_namespace(self, headers: Mapping[str, str]) -> str:
        """Bucket and batch routes are namespaced: X-Namespace is required there."""
        ref = headers.get("x-namespace")
        if not ref:
            msg = "X-Namespace header is required: send the namespace name or ns_ id"
            raise ApiError(400, "BadRequestError", msg, {"header": "X-Namespace"})
        return self._namespace_id(ref)

    def _batch_scope(self, header: str | None, body_ref: str | None) -> str | None:
        """The namespace of a batch listing: from X-Namespace (already resolved) or the body's namespace_id;
        when both are sent they must name the same namespace, else 400, as the SDK documents."""
        from_body = self._namespace_id(body_ref) if body_ref else None
        if header is not None and from_body is not None and header != from_body:
            msg = f"X-Namespace and namespace_id name different namespaces ('{header}', '{from_body}')"
            raise ApiError(400, "BadRequestError", msg, {"header": header, "namespace_id": body_ref})
        return header or from_body

    def _list_tasks(self, request: Request, _match: re.Match[str]) -> Response:
        body = _json_body(request)
        scope = self._scope(request.headers)
        page = self.task_listings.page(
            body,
            request.query,
            scope=scope,
            cursor_pagination=self._cursor_pagination,
            profile=self.profile,
        )
        return Response(200, page)

    def _get_task(self, request: Request, match: re.Match[str]) -> Response:
        task_id = unquote(match["task_id"])
        scope = self._scope(request.headers)
        task = self._world.get_task(task_id)
        if task is None or (scope is not None and task.namespace_id != scope):
            raise ApiError(
                404, "NotFoundError", f"Task '{task_id}' not found", {"resource": "task", "id": task_id}
            )
        return Response(200, task_json(task, self.profile))

    def _list_namespaces(self, request: Request, _match: re.Match[str]) -> Response:
        return Response(200, list_namespaces(self._world.namespaces(), _json_body(request), request.query))

    def _list_buckets(self, request: Request, _match: re.Match[str]) -> Response:
        body = _json_body(request)
        namespace = self._required_namespace(request.headers)
        return Response(200, list_buckets(self._world.buckets(namespace), body, request.query))

    def _list_batches(self, request: Request, _match: re.Match[str]) -> Response:
        """Organisation-wide, or one namespace by X-Namespace or the body's namespace_id."""
        body = _json_body(request)
        ref = request.headers.get("x-namespace")
        header = self._namespace_id(ref) if ref else None
        query = parse_batch_request(body)
        scope = self._batch_scope(header, query.namespace)
        page = list_batches(
            self._world.batches(scope),
            query,
            scope=scope,
            bucket=None,
            cursor_pagination=self._cursor_pagination,
        )
        return Response(200, page)

    def _list_bucket_batches(self, request: Request, match: re.Match[str]) -> Response:
        """One bucket's batches; the bucket is named by id or name within the X-Namespace namespace."""
        body = _json_body(request)
        namespace = self._required_namespace(request.headers)
        query = parse_batch_request(body)
        self._batch_scope(namespace, query.namespace)  # refuses a body namespace_id that disagrees
        ref = unquote(match["bucket"])
        bucket = next(
            (b for b in self._world.buckets(namespace) if ref in (b.bucket_id, b.bucket_name)), None
        )
        if bucket is None:
            raise ApiError(
                404, "NotFoundError", f"Bucket '{ref}' not found", {"resource": "bucket", "id": ref}
            )
        page = list_batches(
            self._world.batches(namespace),
            query,
            scope=namespace,
            bucket=bucket.bucket_id,
            cursor_pagination=self._cursor_pagination,
        )
        return Response(200, page)


def _json_body(request: Request) -> object:
    """The parsed body, None when there is none; malformed JSON is FastAPI's 422 `json_invalid`."""
    if not request.raw_body.strip():
        return None
    try:
        return json.loads(request.raw_body)
    except ValueError as exc:
        position = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
        error = field_error(("body", position), "JSON decode error", "json_invalid", {}, {"error": str(exc)})
        raise ValidationFailed([error]) from None
