"""The two error shapes the real API sends: raised by request handling, turned into responses by the server.

Most errors use the API's envelope; request validation (422) uses FastAPI's `{"detail": [...]}`, the shape a
client gets when pydantic refuses a query parameter or a body.
"""

from collections.abc import Mapping, Sequence


class ApiError(Exception):
    """An error reported in the envelope `{"success": false, "status": N, "error": {...}}`."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        details: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        """The JSON body of the response."""
        return {
            "success": False,
            "status": self.status,
            "error": {
                "message": self.message,
                "type": self.error_type,
                "details": self.details,
                "code": None,
            },
        }


class ValidationFailed(Exception):
    """A request refused with 422 and FastAPI's list of per-field errors."""

    def __init__(self, errors: Sequence[Mapping[str, object]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = [dict(error) for error in errors]

    def body(self) -> dict[str, object]:
        """The JSON body of the response."""
        return {"detail": self.errors}


def field_error(
    loc: Sequence[str | int],
    msg: str,
    error_type: str,
    value: object = None,
    ctx: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """One entry of FastAPI's `detail` list (pydantic v2 style: type, loc, msg, input, optional ctx)."""
    entry: dict[str, object] = {"type": error_type, "loc": list(loc), "msg": msg, "input": value}
    if ctx:
        entry["ctx"] = dict(ctx)
    return entry


def enum_error(loc: Sequence[str | int], value: object, allowed: Sequence[str]) -> dict[str, object]:
    """Pydantic's message for a value outside an enumeration: "Input should be 'a', 'b' or 'c'"."""
    quoted = [repr(item) for item in allowed]
    expected = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
    return field_error(loc, f"Input should be {expected}", "enum", value, {"expected": expected})


def invalid(loc: Sequence[str | int], msg: str, error_type: str, value: object = None) -> ValidationFailed:
    """A 422 with a single field error, ready to raise."""
    return ValidationFailed([field_error(loc, msg, error_type, value)])
