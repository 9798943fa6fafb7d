"""Wire models of a task's own view of the catalog (``POST /v1/tasks/catalog`` and
``POST /v1/tasks/pins/check``).

A task sees the entries of its mandate's tools only, and of each no more than a
gateway needs to present and route it: name, privilege, destinations, labels,
risk tags, mode and description. Credential entries (secret names, providers,
headers, environment variables) are operator knowledge and are not shown.
"""

from collections.abc import Mapping
from typing import Literal

from remit.core.catalog import ToolSpec
from remit.http.wire import ModeName, PinCheckOut, Response, ToolPinRequest, tool_out

__all__ = ["PinCheckOut", "TaskCatalogOut", "TaskToolOut", "ToolPinRequest", "task_catalog_out"]


class TaskToolOut(Response):
    name: str
    privilege: Literal["read", "write", "act"]
    destinations: dict[str, str]
    labels: list[str]
    risk: list[str]
    mode: ModeName
    description: str


class TaskCatalogOut(Response):
    tools: list[TaskToolOut]


def task_tool_out(spec: ToolSpec) -> TaskToolOut:
    """The operator's view of the entry, without its credential."""
    return TaskToolOut(**tool_out(spec).model_dump(exclude={"credential"}))


def task_catalog_out(tools: Mapping[str, ToolSpec]) -> TaskCatalogOut:
    return TaskCatalogOut(tools=[task_tool_out(tools[name]) for name in sorted(tools)])
