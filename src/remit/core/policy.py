"""The Cedar policy engine: validate, compile, slice and evaluate policy sets.

The engine holds one immutable compiled state (policy version, parsed
``PolicySet`` slices, ``Schema`` and ``Entities`` handles) behind a single
attribute. Loaders build a complete new state and swap the reference under a
writer lock; ``evaluate`` reads the reference once and never takes a lock, so
it may run in any number of threads while a load is in progress.

Policy sets are refused whole: every policy needs a unique ``@id`` (used as the
Cedar policy id, so reasons are the ids), no templates, and the set must
validate against the schema. On any problem the previous version stays active.

Slicing: at load time each policy is indexed by its action scope and resource
scope. A request is evaluated only against the policies whose scope can match
its action, its tool and the tool's group (the part of ``"server/tool"`` before
the slash), or for a delegation request (``resource_agent`` set) its action and
the receiving agent. Scope constraints are necessary conditions, so dropping the others
cannot change a decision; anything the indexer does not understand goes to the
match-everything bucket. Sliced ``PolicySet`` handles are built lazily and
cached per (action, tool), deduplicated by their member list.

Fail closed: a decision is ``allowed`` only if Cedar says ``Allow`` with no
diagnostics errors. Every call passes the schema, so a context with a missing,
extra or mistyped attribute is a request error (``NoDecision``), never a
silently skipped policy; it and any evaluation error deny with
``policy-error``.

Approval policies (``@approval("required")``, optionally with ``@quorum("2")``,
1 to 5) are forbids whose only effect is to demand a human approval: when every
forbid that decided a deny is an approval policy (and Cedar reported no error),
the result lists them in ``approval_reasons`` with the largest quorum they ask
for, and the pipeline answers ``approval_required`` instead of ``deny``. The
result itself stays ``allowed=False``: an approval is applied at pipeline step
6, never by policy. A permit carrying ``@approval`` is refused at load.

Shadow policies (``@mode("shadow")``) never decide. When a slice holds any, the
request is evaluated a second time with them included and the shadow forbids
that would have fired are reported in ``shadow_reasons``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import cedarpy

from remit.core.policy_pack import ACTIONS, BASELINE, DELEGATE_ACTION, ISSUE_ACTION, SCHEMA
from remit.errors import InvalidRequest, PolicyInvalid

__all__ = [
    "BASELINE_SOURCE_NAME",
    "DEFAULT_DENY",
    "POLICY_ERROR",
    "POLICY_ID_PATTERN",
    "SLICE_CACHE_MAX",
    "AgentEntity",
    "PolicyEngine",
    "PolicyRequest",
    "PolicyResult",
    "PolicySource",
    "ToolEntity",
    "explain",
    "trust_domain_of",
]

POLICY_ID_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_DENY: Final = "default-deny"
POLICY_ERROR: Final = "policy-error"
RESERVED_IDS: Final = frozenset({DEFAULT_DENY, POLICY_ERROR})
BASELINE_SOURCE_NAME: Final = "<baseline>"
SLICE_CACHE_MAX: Final = 4096
"""At most this many (action, tool) slices are cached per policy version;
beyond it, slices are still computed (and reused if an equal one is cached)."""

_MODES: Final = frozenset({"enforce", "shadow"})
_MAX_ERRORS: Final = 8
_MAX_ERROR_CHARS: Final = 300
_LONG_QUOTE: Final = re.compile(r"`[^`]{64,}`")
_ACTION_REF: Final = re.compile(r'Action::"([^"]*)"')
_ANY: Final = "*"
_LEAF_ACTIONS: Final = frozenset((*ACTIONS, DELEGATE_ACTION, ISSUE_ACTION))
_TOOL_ACTIONS_HINT: Final = (
    " (a policy that reads tool-call context must scope its action to the tool "
    'actions: action in [Action::"read", Action::"write", Action::"act"])'
)


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class PolicySource:
    """One policy file: ``name`` (e.g. ``"ops/limits.cedar"``) is used in error messages."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class AgentEntity:
    """An ``Agent`` entity; ``agent_id`` is the agent's SPIFFE ID.

    ``trust_domain`` defaults to the trust domain of ``agent_id``
    (``""`` when it is not a ``spiffe://`` ID).
    """

    agent_id: str
    owner: str
    trust_domain: str = field(default="")

    def __post_init__(self) -> None:
        if not self.trust_domain:
            object.__setattr__(self, "trust_domain", trust_domain_of(self.agent_id))


def trust_domain_of(agent_id: str) -> str:
    """The trust domain of a ``spiffe://domain/path`` ID; ``""`` for anything else."""
    if not agent_id.startswith("spiffe://"):
        return ""
    return agent_id.removeprefix("spiffe://").partition("/")[0]


@dataclass(frozen=True, slots=True)
class ToolEntity:
    """A ``Tool`` entity named ``"server/tool"``; its parent is ``ToolGroup::"server"``."""

    name: str
    privilege: str
    risk: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One decision request.

    A tool call: ``action`` is the tool's privilege class and the resource is
    ``Tool::"<tool>"``. A delegation edge: ``action`` is ``"delegate"``,
    ``agent_id`` the delegating agent and ``resource_agent`` the receiving one
    (the resource is ``Agent::"<resource_agent>"``; ``tool`` must be ``""``).
    Build one with ``PolicyRequest.delegation``. A credential issuance: ``action``
    is ``"issue_credential"`` and the resource ``Credential::"<resource_credential>"``;
    build one with ``PolicyRequest.issuance``.
    """

    agent_id: str
    action: str
    tool: str
    context: Mapping[str, object]
    resource_agent: str | None = None
    resource_credential: str | None = None

    @classmethod
    def issuance(
        cls, agent_id: str, credential: str, context: Mapping[str, object]
    ) -> PolicyRequest:
        """Agent ``agent_id`` is to get a lease on ``credential`` (a provider or secret)."""
        return cls(
            agent_id=agent_id,
            action=ISSUE_ACTION,
            tool="",
            context=context,
            resource_credential=credential,
        )

    @classmethod
    def delegation(
        cls, agent_id: str, resource_agent: str, context: Mapping[str, object]
    ) -> PolicyRequest:
        """Agent ``agent_id`` delegates to ``resource_agent``."""
        return cls(
            agent_id=agent_id,
            action=DELEGATE_ACTION,
            tool="",
            context=context,
            resource_agent=resource_agent,
        )


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """A decision.

    ``reasons`` are the ``@id`` of the determining policies: the permits that
    fired on allow, the forbids that fired on deny, ``("default-deny",)`` when
    nothing permitted, and ``"policy-error"`` whenever Cedar reported an error.
    """

    allowed: bool
    reasons: tuple[str, ...]
    errors: tuple[str, ...]
    version: str
    shadow_reasons: tuple[str, ...] = ()
    evaluated: int = 0
    approval_reasons: tuple[str, ...] = ()  # every deciding forbid asks for approval
    approval_quorum: int = 0  # the largest quorum they ask for (0: no approval path)


def explain(result: PolicyResult) -> str:
    """One line for humans, e.g. ``denied by exfiltration-after-untrusted-read``."""
    if result.allowed:
        text = f"allowed by {', '.join(result.reasons)}" if result.reasons else "allowed"
    elif result.reasons == (DEFAULT_DENY,):
        text = f"denied: no policy permits ({DEFAULT_DENY})"
    else:
        forbids = [r for r in result.reasons if r != POLICY_ERROR]
        failed = f"policy evaluation failed ({POLICY_ERROR})"
        if forbids:
            text = f"denied by {', '.join(forbids)}"
            if POLICY_ERROR in result.reasons:
                text += f"; {failed}"
        else:
            text = f"denied: {failed}" if POLICY_ERROR in result.reasons else "denied"
    if result.shadow_reasons:
        text += f" [shadow: would be denied by {', '.join(result.shadow_reasons)}]"
    return text


# --------------------------------------------------------------------------- compiled state


@dataclass(frozen=True, slots=True)
class _Policy:
    id: str
    source: str  # the file it came from
    shadow: bool
    actions: frozenset[str] | None  # None: any action
    quorum: int  # 0: not an approval policy; else @approval("required") with this quorum
    resource: tuple[str, str]  # (_ANY, ""), ("tool", name) or ("group", name)
    est: str  # the policy in Cedar's JSON (EST) form, compact


@dataclass(frozen=True, slots=True)
class _Slice:
    enforce: Any  # cedarpy.PolicySet without shadow policies: decides
    full: Any  # cedarpy.PolicySet with them too, or None when the slice has none
    size: int
    shadow_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One policy version. Immutable except for the two slice caches, which only grow."""

    version: str
    policies: tuple[_Policy, ...]
    unsliced: _Slice
    index: Mapping[tuple[str, str, str], tuple[int, ...]]
    slices: dict[tuple[str, str, str], _Slice]
    by_members: dict[tuple[int, ...], _Slice]
    approvals: Mapping[str, int]  # approval policy id -> quorum

    def slice_for(self, action: str, tool: str, agent: str | None = None) -> _Slice:
        """The slice for a tool call, or with ``agent`` for a request on that Agent."""
        key = (action, tool, "" if agent is None else agent)
        found = self.slices.get(key)
        if found is not None:
            return found
        if action not in _LEAF_ACTIONS:
            # Not a known leaf action: no sound slice; Cedar sees everything.
            return self.unsliced
        members = self.members(action, tool, agent)
        built = self.by_members.get(members)
        if built is None:
            built = _build_slice([self.policies[i] for i in members])
            if len(self.by_members) < SLICE_CACHE_MAX:
                built = self.by_members.setdefault(members, built)
        if len(self.slices) < SLICE_CACHE_MAX:
            self.slices[key] = built
        return built

    def members(self, action: str, tool: str, agent: str | None = None) -> tuple[int, ...]:
        resources = [(_ANY, "")]
        if agent is not None:
            resources.append(("agent", agent))
        else:
            resources.append(("tool", tool))
            group = _tool_group(tool)
            if group is not None:
                resources.append(("group", group))
        found: set[int] = set()
        for act in (_ANY, action):
            for kind, name in resources:
                found.update(self.index.get((act, kind, name), ()))
        return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class _State:
    schema: Any  # cedarpy.Schema
    compiled: _Compiled
    entities: Any  # cedarpy.Entities, built with the schema
    entities_inner: Any = field(init=False, default=None)  # its extension handle

    def __post_init__(self) -> None:
        object.__setattr__(self, "entities_inner", getattr(self.entities, "_inner", None))


@dataclass(frozen=True, slots=True)
class _Outcome:
    decision: str  # "Allow" | "Deny" | "NoDecision"
    reasons: tuple[str, ...]
    errors: tuple[str, ...]


# --------------------------------------------------------------------------- engine


class PolicyEngine:
    """Validates, compiles and evaluates Cedar policy sets; see the module docstring."""

    def __init__(self, *, schema: str = SCHEMA, baseline: str = BASELINE) -> None:
        try:
            schema_handle = cedarpy.Schema.from_str(schema)
        except ValueError as exc:
            raise PolicyInvalid(
                f"the Cedar schema does not parse: {_clean(str(exc))}", reason="schema_invalid"
            ) from None
        self._schema_text = schema
        self._schema = schema_handle
        self._baseline = PolicySource(BASELINE_SOURCE_NAME, baseline)
        self._write_lock = threading.Lock()
        self._state = _State(schema_handle, self._compile(()), self._build_entities((), ()))

    # ---- loading

    def validate(self, sources: Sequence[PolicySource]) -> None:
        """Check baseline plus ``sources`` as one set; raise ``PolicyInvalid`` listing problems."""
        self._compile(sources)

    def load(self, sources: Sequence[PolicySource]) -> str:
        """Validate, compile and atomically activate baseline plus ``sources``.

        Returns the new version id. On any problem raises ``PolicyInvalid`` and
        the active version is untouched.
        """
        compiled = self._compile(sources)
        with self._write_lock:
            self._state = replace(self._state, compiled=compiled)
        return compiled.version

    def set_entities(self, agents: Sequence[AgentEntity], tools: Sequence[ToolEntity]) -> None:
        """Rebuild the ``Entities`` handle (validated against the schema) and swap it in."""
        entities = self._build_entities(agents, tools)
        with self._write_lock:
            self._state = replace(self._state, entities=entities)

    @property
    def version(self) -> str:
        return self._state.compiled.version

    def policy_ids(self) -> tuple[str, ...]:
        """The ``@id`` of every active policy, baseline first, in file order."""
        return tuple(p.id for p in self._state.compiled.policies)

    def slice_size(self, action: str, tool: str, *, resource_agent: str | None = None) -> int:
        """How many policies (shadow ones included) Cedar sees for this action and tool
        (or, with ``resource_agent``, this action on that agent)."""
        return self._state.compiled.slice_for(action, tool, resource_agent).size

    # ---- deciding

    def evaluate(self, request: PolicyRequest, *, sliced: bool = True) -> PolicyResult:
        """Decide one call. Never raises for Cedar problems: they deny with ``policy-error``.

        ``sliced=False`` hands Cedar the whole set (for differential testing
        and tooling; decisions are identical).
        """
        state = self._state  # read once: one consistent version for the whole call
        compiled = state.compiled
        try:
            agent = request.resource_agent
            credential = request.resource_credential
            if agent is not None and (not isinstance(agent, str) or request.tool):
                raise ValueError("a request names a tool or an agent as its resource, not both")
            if credential is not None and (
                not isinstance(credential, str) or request.tool or agent is not None
            ):
                raise ValueError("a credential request names only the credential")
            chosen = (
                compiled.slice_for(request.action, request.tool, agent)
                if sliced
                else compiled.unsliced
            )
            resource = (
                {"type": "Credential", "id": credential}
                if credential is not None
                else {"type": "Tool", "id": request.tool}
                if agent is None
                else {"type": "Agent", "id": agent}
            )
            cedar_request: dict[str, object] = {
                "principal": {"type": "Agent", "id": request.agent_id},
                "action": {"type": "Action", "id": request.action},
                "resource": resource,
                "context": json.dumps(
                    request.context,
                    default=_json_default,
                    allow_nan=False,
                    separators=(",", ":"),
                ),
            }
        except Exception as exc:
            return PolicyResult(
                allowed=False,
                reasons=(POLICY_ERROR,),
                errors=(f"request could not be prepared: {type(exc).__name__}",),
                version=compiled.version,
            )

        outcome = _authorize(cedar_request, chosen.enforce, state)
        if outcome.errors or outcome.decision != "Allow":
            allowed = False
            if outcome.errors or outcome.decision != "Deny":
                forbids = outcome.reasons if outcome.decision == "Deny" else ()
                reasons = (*forbids, POLICY_ERROR)
            else:
                reasons = outcome.reasons or (DEFAULT_DENY,)
        else:
            allowed = True
            reasons = outcome.reasons

        approval_reasons: tuple[str, ...] = ()
        quorum = 0
        if (
            not allowed
            and not outcome.errors
            and outcome.decision == "Deny"
            and outcome.reasons
            and all(r in compiled.approvals for r in outcome.reasons)
        ):
            approval_reasons = outcome.reasons
            quorum = max(compiled.approvals[r] for r in outcome.reasons)

        shadow: tuple[str, ...] = ()
        if chosen.full is not None:
            shadow = _shadow_reasons(
                outcome, _authorize(cedar_request, chosen.full, state), chosen.shadow_ids
            )

        return PolicyResult(
            allowed=allowed,
            reasons=reasons,
            errors=outcome.errors[:_MAX_ERRORS],
            version=compiled.version,
            shadow_reasons=shadow,
            evaluated=chosen.size,
            approval_reasons=approval_reasons,
            approval_quorum=quorum,
        )

    # ---- internals

    def _compile(self, sources: Sequence[PolicySource]) -> _Compiled:
        problems: list[str] = []
        policies: list[_Policy] = []
        ests: dict[str, object] = {}
        seen: dict[str, str] = {}
        for source in (self._baseline, *sources):
            if not isinstance(source, PolicySource):
                problems.append(f"{source!r}: not a PolicySource")
                continue
            problems.extend(self._read_source(source, policies, ests, seen))
        if problems:
            plural = "s" if len(problems) > 1 else ""
            raise PolicyInvalid(
                f"policy set refused ({len(problems)} problem{plural}):\n  "
                + "\n  ".join(problems),
                problems=tuple(problems),
            )

        canonical = json.dumps(
            {"schema": self._schema_text, "policies": ests},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        version = "pv_" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

        index: dict[tuple[str, str, str], list[int]] = {}
        for position, policy in enumerate(policies):
            kind, name = policy.resource
            for action in policy.actions if policy.actions is not None else (_ANY,):
                index.setdefault((action, kind, name), []).append(position)

        try:
            unsliced = _build_slice(policies, release_gil=True)
        except ValueError as exc:  # validated above; kept as a backstop
            raise PolicyInvalid(
                f"policy set refused: Cedar could not build it: {_clean(str(exc))}"
            ) from None
        return _Compiled(
            version=version,
            policies=tuple(policies),
            unsliced=unsliced,
            index={key: tuple(value) for key, value in index.items()},
            slices={},
            by_members={},
            approvals={p.id: p.quorum for p in policies if p.quorum and not p.shadow},
        )

    def _read_source(
        self,
        source: PolicySource,
        policies: list[_Policy],
        ests: dict[str, object],
        seen: dict[str, str],
    ) -> list[str]:
        name = source.name
        try:
            document = json.loads(cedarpy.policies_to_json_str(source.text))
        except ValueError as exc:
            return [f"{name}: syntax error: {_clean(str(exc))}"]

        problems: list[str] = []
        templates = document.get("templates") or {}
        if templates:
            problems.append(f"{name}: templates are not supported ({len(templates)} found)")

        statics: dict[str, dict[str, Any]] = document.get("staticPolicies") or {}
        ids_by_cedar_id: dict[str, str] = {}
        for cedar_id in sorted(statics, key=_positional):
            est = statics[cedar_id]
            label = f"policy #{_positional(cedar_id) + 1}"
            annotations: dict[str, Any] = est.get("annotations") or {}
            policy_id = annotations.get("id")
            if policy_id is None:
                problems.append(f"{name}: {label} has no @id annotation")
                continue
            if not isinstance(policy_id, str) or not POLICY_ID_PATTERN.fullmatch(policy_id):
                problems.append(
                    f"{name}: {label} has @id {policy_id!r}, which does not match "
                    f"[a-z0-9][a-z0-9-]{{0,62}}"
                )
                continue
            ids_by_cedar_id[cedar_id] = policy_id
            if policy_id in RESERVED_IDS:
                problems.append(f"{name}: @id {policy_id!r} is reserved")
                continue
            if policy_id in seen:
                problems.append(f"{name}: @id {policy_id!r} is already used in {seen[policy_id]}")
                continue
            seen[policy_id] = name
            mode = annotations.get("mode", "enforce")
            if mode not in _MODES:
                problems.append(f'{name}: {policy_id}: @mode must be "enforce" or "shadow"')
                continue
            approval = annotations.get("approval")
            quorum_text = annotations.get("quorum")
            quorum = 0
            if approval is not None or quorum_text is not None:
                if approval != "required" or est.get("effect") != "forbid":
                    problems.append(
                        f'{name}: {policy_id}: @approval("required") goes on a forbid only'
                    )
                    continue
                quorum = 1
                if quorum_text is not None:
                    if quorum_text not in {"1", "2", "3", "4", "5"}:
                        problems.append(f"{name}: {policy_id}: @quorum must be 1 to 5")
                        continue
                    quorum = int(quorum_text)
            ests[policy_id] = est
            policies.append(
                _Policy(
                    id=policy_id,
                    source=name,
                    shadow=mode == "shadow",
                    quorum=quorum,
                    actions=_action_scope(est.get("action")),
                    resource=_resource_scope(est.get("resource")),
                    est=json.dumps(est, separators=(",", ":"), ensure_ascii=False),
                )
            )

        try:
            result = cedarpy.validate_policies(source.text, self._schema, release_gil=True)
        except ValueError as exc:
            problems.append(f"{name}: validation failed: {_clean(str(exc))}")
            return problems
        if not result.validation_passed:
            annotated: dict[str, str] = result.id_annotations_by_policy_id
            # Cedar repeats a type error once per action; report it once, naming them all.
            grouped: dict[str, list[str]] = {}
            for error in result.errors:
                cedar_id = error.policy_id
                message = error.error
                prefix = f"{name}: "
                if cedar_id:
                    shown = ids_by_cedar_id.get(cedar_id) or annotated.get(cedar_id) or cedar_id
                    message = message.replace(f"for policy `{cedar_id}`, ", "")
                    prefix = f"{name}: {shown}: "
                actions = _ACTION_REF.findall(message)
                template = prefix + (
                    _ACTION_REF.sub("Action::{}", message) if len(actions) == 1 else message
                )
                names = grouped.setdefault(template, [])
                names.extend(a for a in actions[:1] if len(actions) == 1 and a not in names)
            for template, names in grouped.items():
                shown_actions = "/".join(f'"{a}"' for a in sorted(names))
                problem = _clean(template.replace("Action::{}", f"Action::{shown_actions}"))
                other = {DELEGATE_ACTION, ISSUE_ACTION}
                if names and set(names) <= other and "in context" in template:
                    problem += _TOOL_ACTIONS_HINT
                problems.append(problem)
        return problems

    def _build_entities(self, agents: Sequence[AgentEntity], tools: Sequence[ToolEntity]) -> Any:
        documents: list[dict[str, object]] = []
        uids: set[tuple[str, str]] = set()
        groups: set[str] = set()

        def add(kind: str, uid: str, attrs: dict[str, object], parents: list[object]) -> None:
            if (kind, uid) in uids:
                raise InvalidRequest(f"duplicate {kind} entity {uid!r}", reason="bad_entities")
            uids.add((kind, uid))
            documents.append({"uid": {"type": kind, "id": uid}, "attrs": attrs, "parents": parents})

        for agent in agents:
            attrs_agent: dict[str, object] = {
                "owner": agent.owner,
                "trust_domain": agent.trust_domain,
            }
            add("Agent", agent.agent_id, attrs_agent, [])
        for tool in tools:
            group = _tool_group(tool.name)
            if group is None:
                raise InvalidRequest(
                    f"tool name {tool.name!r} is not of the form server/tool", reason="bad_entities"
                )
            groups.add(group)
            attrs: dict[str, object] = {"privilege": tool.privilege, "risk": sorted(tool.risk)}
            add("Tool", tool.name, attrs, [{"type": "ToolGroup", "id": group}])
        for group in sorted(groups):
            add("ToolGroup", group, {}, [])
        try:
            return cedarpy.Entities.from_json_str(
                json.dumps(documents), self._schema, release_gil=len(documents) > 256
            )
        except ValueError as exc:
            raise InvalidRequest(
                f"entities do not fit the schema: {_clean(str(exc))}", reason="bad_entities"
            ) from None


# --------------------------------------------------------------------------- helpers


_DECISIONS: Final = frozenset({"Allow", "Deny", "NoDecision"})
_CEDAR_BATCH: Final = getattr(getattr(cedarpy, "_internal", None), "is_authorized_batch", None)


def _authorize(request: dict[str, object], policies: Any, state: _State) -> _Outcome:
    """One Cedar call, with every failure mode folded into an outcome.

    Calls the extension directly when it is there (the public wrapper only copies the
    request, unwraps the entities handle and parses the answer into objects: ~5 µs a
    call); the schema is passed either way, so Cedar validates every request."""
    try:
        if _CEDAR_BATCH is not None and state.entities_inner is not None:
            answers = _CEDAR_BATCH([request], policies, state.entities_inner, state.schema, False)
            answer = json.loads(answers[0])
            decision = answer["decision"]
            diagnostics = answer.get("diagnostics") or {}
            raw_reasons = diagnostics.get("reason") or []
            raw_errors = diagnostics.get("errors") or []
        else:
            result = cedarpy.is_authorized(request, policies, state.entities, schema=state.schema)
            decision = result.decision.value
            raw_reasons = result.diagnostics.reasons
            raw_errors = result.diagnostics.errors
        if decision not in _DECISIONS:
            raise ValueError("unknown decision")
        reasons = tuple(sorted(str(r) for r in raw_reasons))
        errors = tuple(sorted({_clean(str(e)) for e in raw_errors}))
    except Exception as exc:
        return _Outcome("NoDecision", (), (f"cedar call failed: {type(exc).__name__}",))
    if decision == "NoDecision" and not errors:
        errors = ("cedar returned no decision",)
    return _Outcome(decision, reasons, errors)


def _shadow_reasons(
    enforce: _Outcome, full: _Outcome, shadow_ids: frozenset[str]
) -> tuple[str, ...]:
    found: list[str] = []
    if full.decision == "Deny":
        found.extend(r for r in full.reasons if r in shadow_ids)
    if set(full.errors) - set(enforce.errors):
        found.append(POLICY_ERROR)
    return tuple(found)


def _build_slice(policies: Sequence[_Policy], *, release_gil: bool = False) -> _Slice:
    enforce = [p for p in policies if not p.shadow]
    shadow_ids = frozenset(p.id for p in policies if p.shadow)
    enforce_set = cedarpy.PolicySet.from_json_str(_set_json(enforce), release_gil=release_gil)
    full_set = (
        cedarpy.PolicySet.from_json_str(_set_json(policies), release_gil=release_gil)
        if shadow_ids
        else None
    )
    return _Slice(enforce=enforce_set, full=full_set, size=len(policies), shadow_ids=shadow_ids)


def _set_json(policies: Iterable[_Policy]) -> str:
    body = ",".join(f"{json.dumps(p.id)}:{p.est}" for p in policies)
    return f'{{"staticPolicies":{{{body}}},"templates":{{}},"templateLinks":[]}}'


def _action_scope(scope: object) -> frozenset[str] | None:
    """The actions a policy's action scope can match, or None for any (or unknown)."""
    if not isinstance(scope, Mapping):
        return None
    op = scope.get("op")
    if op in ("==", "in") and "entity" in scope:
        targets = [scope["entity"]]
    elif op == "in" and "entities" in scope:
        targets = list(scope["entities"])
    else:
        return None
    ids: set[str] = set()
    for target in targets:
        if not isinstance(target, Mapping) or target.get("type") != "Action":
            return None
        action = target.get("id")
        # `in` a non-leaf action would also match its members: don't slice on it.
        if action not in _LEAF_ACTIONS:
            return None
        ids.add(str(action))
    return frozenset(ids)


def _resource_scope(scope: object) -> tuple[str, str]:
    """The index key of a policy's resource scope; (_ANY, "") when it may match any resource.

    ``("tool", name)``, ``("group", name)`` or ``("agent", id)``; anything else
    (``is Agent`` alone, unknown types) goes to the match-everything bucket.
    """
    if not isinstance(scope, Mapping):
        return (_ANY, "")
    op = scope.get("op")
    if op in ("==", "in"):
        target = scope.get("entity")
    elif op == "is":
        if scope.get("entity_type") not in ("Tool", "Agent") or not isinstance(
            scope.get("in"), Mapping
        ):
            return (_ANY, "")
        target = scope["in"].get("entity")
    else:
        return (_ANY, "")
    if not isinstance(target, Mapping) or not isinstance(target.get("id"), str):
        return (_ANY, "")
    # A Tool has no Tool descendants, so `in Tool::"x"` is `== Tool::"x"`.
    if target.get("type") == "Tool":
        return ("tool", target["id"])
    if target.get("type") == "ToolGroup":
        return ("group", target["id"])
    # An Agent has no parents in the schema, so `in Agent::"x"` is `== Agent::"x"`.
    if target.get("type") == "Agent":
        return ("agent", target["id"])
    return (_ANY, "")


def _tool_group(tool: str) -> str | None:
    server, slash, _ = tool.partition("/")
    return server if slash and server else None


def _positional(cedar_id: str) -> int:
    digits = cedar_id.removeprefix("policy")
    return int(digits) if digits.isdigit() else 1 << 30


def _json_default(value: object) -> object:
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _clean(message: str) -> str:
    """Bound a Cedar message and drop long quoted values (request contexts)."""
    message = _LONG_QUOTE.sub("`…`", message.replace("\n", " "))
    if len(message) > _MAX_ERROR_CHARS:
        message = message[: _MAX_ERROR_CHARS - 1] + "…"
    return message
