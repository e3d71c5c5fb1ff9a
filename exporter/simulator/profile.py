"""Which answer the simulator gives to each question the API's documentation leaves open.

The default profile is the documented API only (0.81 spec, SDK 1.3.783): task payloads are exactly the
documented TaskResponse (no timestamps), `additional_data.namespace_id` is on batch tasks only, and every
declared feature (filters, sort, both batch listings) works. Each switch turns one undocumented behaviour on
or a declared one off, so a client can be tested against every answer the real API might give. X-Namespace
on the task routes is honoured by default: no spec declares it, and `header=ignored` is the other answer.

The compact text form (`ApiProfile.parse`, `str(profile)`) is a comma-separated list of settings, e.g.
`timestamps,header=ignored,namespace_ids=all,filters=ignored,refuse_operator=in,sort=ignored,batches_list=absent`;
an empty text or `default` is the default profile.
"""

import enum
from dataclasses import dataclass
from typing import Any, Final, Self

from .enums import BATCH_PROCESS_TASK_TYPE, FILTER_OPERATORS


class NamespaceIds(enum.StrEnum):
    """Which tasks carry `additional_data.namespace_id`."""

    ALL = "all"
    BATCH = "batch"
    """Only `api_buckets_batches_process` tasks, the one type the SDK marks it REQUIRED on."""
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ApiProfile:
    """The simulated API's answer to each open question; the defaults are the documented API."""

    timestamps: bool = False
    """Task payloads carry created_at, updated_at and (once finished) completed_at."""
    header_honoured: bool = True
    """X-Namespace limits /v1/tasks/list and GET /v1/tasks/{id} to one namespace; else organisation-wide."""
    namespace_ids: NamespaceIds = NamespaceIds.BATCH
    filters_honoured: bool = True
    """`filters` on /v1/tasks/list select tasks; else they are validated, then the listing is unfiltered."""
    refuse_operator: str | None = None
    """A filter operator the server refuses with 422, wherever it appears in `filters`."""
    sort_honoured: bool = True
    """`sort` orders the listing; else it is validated, then the default order (created_at ascending) holds.
    """
    batches_list: bool = True
    """POST /v1/batches/list exists (SDK 1.3.783); else it is a 404, as in the 0.81 spec."""

    def __post_init__(self) -> None:
        if self.refuse_operator is not None and self.refuse_operator not in FILTER_OPERATORS:
            raise ValueError(f"unknown filter operator {self.refuse_operator!r} to refuse")

    def shows_namespace_id(self, task_type: str) -> bool:
        """Whether a task of this type carries additional_data.namespace_id in its payload."""
        if self.namespace_ids is NamespaceIds.BATCH:
            return task_type == BATCH_PROCESS_TASK_TYPE
        return self.namespace_ids is NamespaceIds.ALL

    @classmethod
    def parse(cls, text: str) -> Self:
        """The profile a compact text names; ValueError with a one-line message for anything unknown."""
        settings: dict[str, Any] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item or item == "default":
                continue
            key, has_value, value = (part.strip() for part in item.partition("="))
            if key not in _SETTINGS:
                raise ValueError(f"unknown API profile setting {key!r} (known: {', '.join(_SETTINGS)})")
            name, words = _SETTINGS[key]
            if name in settings:
                raise ValueError(f"API profile setting {key!r} given twice")
            if key == "timestamps" and not has_value:
                value = "present"
            if words:
                if value not in words:
                    raise ValueError(f"{key}={value!r}: expected one of {', '.join(words)}")
                settings[name] = words[value]
            elif value in FILTER_OPERATORS:
                settings[name] = value
            else:
                raise ValueError(f"{key}={value!r}: not a filter operator ({', '.join(FILTER_OPERATORS)})")
        return cls(**settings)

    def __str__(self) -> str:
        """The compact text form, naming only what differs from the default (`default` when nothing does)."""
        default = ApiProfile()
        parts: list[str] = []
        for key, (name, values) in _SETTINGS.items():
            value = getattr(self, name)
            if value == getattr(default, name):
                continue
            if key == "refuse_operator":
                parts.append(f"{key}={value}")
            elif key == "timestamps":
                parts.append(key)
            else:
                parts.append(f"{key}={next(word for word, v in values.items() if v == value)}")
        return ",".join(parts) or "default"


# Text key -> (field, {word: value}); refuse_operator takes any filter operator instead of a word.
_SETTINGS: Final[dict[str, tuple[str, dict[str, object]]]] = {
    "timestamps": ("timestamps", {"present": True, "absent": False}),
    "header": ("header_honoured", {"honoured": True, "ignored": False}),
    "namespace_ids": ("namespace_ids", {member.value: member for member in NamespaceIds}),
    "filters": ("filters_honoured", {"honoured": True, "ignored": False}),
    "refuse_operator": ("refuse_operator", {}),
    "sort": ("sort_honoured", {"honoured": True, "ignored": False}),
    "batches_list": ("batches_list", {"present": True, "absent": False}),
}

DOCUMENTED: Final = ApiProfile()
"""The documented API only: the default."""
