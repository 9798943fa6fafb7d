"""The Cedar schema and the baseline policy pack, as text.

Pure data: no imports beyond the standard library, no I/O. ``core.policy``
compiles these strings into Cedar handles; operators add their own policy files
on top of ``BASELINE`` and may never replace or shadow a baseline ``@id``.

Every policy carries an ``@id("...")`` annotation (``[a-z0-9][a-z0-9-]{0,62}``);
the engine uses it as the Cedar policy id, so decision reasons read
``exfiltration-after-untrusted-read`` rather than ``policy5``. A policy may also
carry ``@mode("shadow")``: it is evaluated and reported but never decides.

Approvals: a forbid annotated ``@approval("required")`` (optionally with
``@quorum("n")``, n from 1 to 5, default 1) demands a human approval of the
exact call instead of denying it. When every forbid that fired is an approval
policy, the decision is ``approval_required``; the agent repeats the exact call
with the approval id once ``n`` distinct approvers have approved it (pipeline
step 6), and it is allowed once. Any other forbid that fires makes it a plain
deny. The baseline ``approval-high-risk-act`` asks for approval of every act on
a tool with the catalog risk tag ``payment`` or ``approval``. The context
attribute ``approved`` is always false at evaluation: an approval is applied
after policy, never by it, so no policy can be written to trust one.

Context values are plain Cedar values built by the pipeline:

* sensitivities are ``Long`` on the lattice ``0 public < 1 internal <
  2 confidential < 3 restricted`` (``core.labels.Sensitivity``);
* destinations are ``"kind:value"`` strings (``"email:bob@example.com"``) and
  are split by how the mandate covers them: ``destinations_explicit`` (an exact
  mandate entry, a request-derived one, or the principal's own identifiers),
  ``destinations_by_pattern`` (only a wildcard entry) and
  ``destinations_outside`` (nothing); ``destinations`` is their union.

Two kinds of request share one schema. Tool calls are the actions ``read``,
``write`` and ``act`` (principal ``Agent``, resource ``Tool``); a delegation
edge is the action ``delegate`` (principal the delegating agent A, resource the
receiving agent B, both ``Agent``; context ``DELEGATE_CONTEXT_ATTRIBUTES``). The
two contexts differ, so a policy that reads a tool-call-only attribute (such as
``context.tool_in_mandate``) must scope its action to the tool actions, e.g.
``action in [Action::"read", Action::"write", Action::"act"]``, or it is refused
at load; the baseline does so. A policy with an unscoped action that reads only
what both share (``principal``, ``context.mode``, ``context.taint_*``) applies
to delegation too.

Delegation is default-deny. The baseline permits an edge inside one SPIFFE trust
domain (``permit-delegation-same-trust-domain``) and forbids handing a task that
has read restricted data to an agent with another owner
(``no-restricted-data-to-other-owners``). Across trust domains nothing permits,
so such a delegation is refused until an operator permits the edge, naming the
foreign domain or agent::

    @id("lead-may-delegate-to-partner")
    permit (principal == Agent::"spiffe://a.example/agent/lead",
            action == Action::"delegate", resource)
    when { resource.trust_domain == "partner.example" };

and an operator closes an edge inside a domain with a forbid::

    @id("lead-never-delegates-to-researcher")
    forbid (principal == Agent::"spiffe://a.example/agent/lead",
            action == Action::"delegate",
            resource == Agent::"spiffe://a.example/agent/researcher");

``@approval`` on a delegate forbid has no approval path (delegation is never
held for a human): it simply denies.

Credential issuance (issue 6) is a third kind of request: the action
``issue_credential``, principal the calling ``Agent``, resource
``Credential::"<provider or sealed secret name>"``, context
``ISSUE_CONTEXT_ATTRIBUTES`` (the task, the tool and its privilege, whether the
tool is in the mandate, delegation and depth, taint, the provider kind, whether
the credential is per call, and the mode). It is asked after the call policy
allowed a tool call whose catalog entry names a credential, on every such call
(a reused lease included), and it is always enforced: a shadow-mode call does
not get a credential that issuance policy forbids (an operator who wants that
may permit it with ``context.mode == "shadow"``). Default-deny; the baseline:

* ``permit-credential-within-mandate``: issue for a tool in the task's mandate;
* ``no-credential-deep-delegation``: never to a delegated task deeper than
  ``MAX_CREDENTIAL_DEPTH`` (1: a direct sub-task may hold a credential, its own
  sub-tasks may not);
* ``no-credential-delegated-restricted-taint``: never to a delegated task that
  has read restricted data.

An operator forbid stops issuance, e.g.::

    @id("no-prod-db-for-researchers")
    forbid (principal, action == Action::"issue_credential",
            resource == Credential::"prod-db")
    when { context.task.purpose like "*research*" };
"""

from __future__ import annotations

from typing import Final

ACTIONS: Final[tuple[str, ...]] = ("read", "write", "act")
"""The privilege classes, which are the Cedar actions a tool call is checked as.

They are leaves: no action groups. Policy slicing in ``core.policy`` relies on
that (``action in Action::"act"`` matches exactly the ``act`` requests).
"""

DELEGATE_ACTION: Final = "delegate"
"""The Cedar action a delegation edge is checked as (principal A, resource B).

Also a leaf. Its context is ``DELEGATE_CONTEXT_ATTRIBUTES``, not the tool-call one.
"""

ISSUE_ACTION: Final = "issue_credential"
"""The Cedar action credential issuance is checked as (principal Agent, resource
Credential). A leaf; its context is ``ISSUE_CONTEXT_ATTRIBUTES``."""

MAX_CREDENTIAL_DEPTH: Final = 1
"""The deepest delegated task the baseline lets hold a downstream credential."""

SENSITIVITY_LEVELS: Final[dict[str, int]] = {
    "public": 0,
    "internal": 1,
    "confidential": 2,
    "restricted": 3,
}

CONTEXT_ATTRIBUTES: Final[tuple[str, ...]] = (
    "mode",
    "instance",
    "task",
    "tool_in_mandate",
    "destinations",
    "destinations_explicit",
    "destinations_by_pattern",
    "destinations_outside",
    "output_sensitivity",
    "output_flags",
    "taint_sensitivity",
    "taint_flags",
    "budget_remaining",
    "approved",
    "anomaly_score",
    "delegated",
    "hour_utc",
)
"""Every attribute of a tool-call context; all are required by ``SCHEMA``."""

DELEGATE_CONTEXT_ATTRIBUTES: Final[tuple[str, ...]] = (
    "mode",
    "parent_task",
    "child_tools",
    "child_sensitivity",
    "child_budget",
    "depth",
    "same_trust_domain",
    "taint_sensitivity",
    "taint_flags",
)
"""Every attribute of a delegation context; all are required by ``SCHEMA``."""

ISSUE_CONTEXT_ATTRIBUTES: Final[tuple[str, ...]] = (
    "mode",
    "task",
    "tool",
    "privilege",
    "tool_in_mandate",
    "delegated",
    "depth",
    "taint_sensitivity",
    "taint_flags",
    "kind",
    "per_call",
)
"""Every attribute of a credential-issuance context; all are required by ``SCHEMA``."""

SCHEMA: Final[str] = r"""
// Remit's Cedar schema: what a tool-call decision can see.

// A registered agent. uid id = the agent's SPIFFE ID string.
entity Agent {
  owner: String,                        // the accountable human or team
  trust_domain: String,                 // the SPIFFE trust domain of its ID
};

// A tool server. uid id = the server's name, e.g. "email".
entity ToolGroup;

// One tool, from the admin-set catalog. uid id = "server/tool"; its parent is
// ToolGroup::"server".
entity Tool in [ToolGroup] {
  privilege: String,                    // "read" | "write" | "act"
  risk: Set<String>,                    // catalog risk tags, e.g. "payment"
};

type TaskInfo = {
  id: String,
  principal: String,                    // on whose behalf the task runs
  purpose: String,
  sensitivity_ceiling: Long,            // 0 public .. 3 restricted
  delegation_depth: Long,               // 0 for a root task
};

// The privilege classes. A tool call is checked as its tool's class.
action "read", "write", "act" appliesTo {
  principal: [Agent],
  resource: [Tool],
  context: {
    mode: String,                       // "enforce" | "shadow"
    instance: String,                   // the calling instance's id
    task: TaskInfo,
    tool_in_mandate: Bool,
    destinations: Set<String>,          // "kind:value" of every destination in the call
    destinations_explicit: Set<String>, // exact or request-derived entry, or the principal's own
    destinations_by_pattern: Set<String>, // matched only a wildcard mandate entry
    destinations_outside: Set<String>,  // matched nothing in the mandate
    output_sensitivity: Long,           // 0 public, 1 internal, 2 confidential, 3 restricted
    output_flags: Set<String>,          // e.g. "pii", "untrusted"
    taint_sensitivity: Long,            // highest sensitivity the task has read so far
    taint_flags: Set<String>,
    budget_remaining: Long,             // calls left before this one
    approved: Bool,                     // a matching human approval was presented
    anomaly_score: Long,                // 0..100
    delegated: Bool,
    hour_utc: Long,
  },
};

// One delegation edge: agent A (principal) hands a sub-task to agent B
// (resource). Checked once, when the child task would be opened.
action "delegate" appliesTo {
  principal: [Agent],
  resource: [Agent],
  context: {
    mode: String,                       // A's mode: "enforce" | "shadow"
    parent_task: TaskInfo,              // A's task, the one being delegated from
    child_tools: Set<String>,           // the child mandate's tools
    child_sensitivity: Long,            // the child's sensitivity ceiling
    child_budget: Long,                 // calls carved out of the parent's budget
    depth: Long,                        // the child's delegation depth (parent's + 1)
    same_trust_domain: Bool,            // A and B share a SPIFFE trust domain
    taint_sensitivity: Long,            // the parent's taint, inherited by the child
    taint_flags: Set<String>,
  },
};

// A downstream credential, named by its provider (or sealed secret). uid id =
// the name in the tool's catalog credential entry.
entity Credential;

// Issuing a credential for an allowed tool call (pipeline step 7).
action "issue_credential" appliesTo {
  principal: [Agent],
  resource: [Credential],
  context: {
    mode: String,                       // the call's mode: "enforce" | "shadow"
    task: TaskInfo,
    tool: String,                       // the tool the credential is injected into
    privilege: String,                  // its class: "read" | "write" | "act"
    tool_in_mandate: Bool,
    delegated: Bool,
    depth: Long,                        // the task's delegation depth (0: a root task)
    taint_sensitivity: Long,
    taint_flags: Set<String>,
    kind: String,                       // the provider kind: static, signed-token, postgres
    per_call: Bool,                     // bound to this one call
  },
};
"""

BASELINE: Final[str] = r"""
// Remit baseline pack. Operators add policies; they cannot remove these.

// The one permit: a call inside the task's mandate, within its sensitivity
// ceiling and budget. Everything else is denied by default.
@id("permit-within-mandate")
permit (principal, action in [Action::"read", Action::"write", Action::"act"], resource)
when {
  context.tool_in_mandate &&
  context.destinations_outside.isEmpty() &&
  context.output_sensitivity <= context.task.sensitivity_ceiling &&
  context.budget_remaining > 0
};

// The forbids below restate the permit's conditions one by one, so that a
// deny names the rule that failed instead of "no policy permits", and so that
// an operator permit cannot widen the mandate.
@id("mandate-tool-scope")
forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource)
unless { context.tool_in_mandate };

@id("mandate-destination-scope")
forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource)
when { !context.destinations_outside.isEmpty() };

@id("sensitivity-ceiling")
forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource)
when { context.output_sensitivity > context.task.sensitivity_ceiling };

@id("budget-exhausted")
forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource)
when { context.budget_remaining <= 0 };

// After reading content a third party can write, an act may go only to
// destinations the mandate names explicitly, never to ones merely allowed by a
// wildcard: injected instructions must not be able to pick the recipient.
@id("exfiltration-after-untrusted-read")
forbid (principal, action == Action::"act", resource)
when {
  context.taint_flags.contains("untrusted") &&
  (!context.destinations_outside.isEmpty() ||
   !context.destinations_by_pattern.isEmpty())
};

// Same after reading confidential (or restricted) data.
@id("exfiltration-after-confidential-read")
forbid (principal, action == Action::"act", resource)
when {
  context.taint_sensitivity >= 2 &&
  (!context.destinations_outside.isEmpty() ||
   !context.destinations_by_pattern.isEmpty())
};

// High-risk acts need a human approval of the one exact call (pipeline step 6).
@id("approval-high-risk-act")
@approval("required")
forbid (principal, action == Action::"act", resource)
when {
  resource has risk &&
  (resource.risk.contains("payment") || resource.risk.contains("approval"))
};

// Delegation (Action::"delegate", principal A -> resource B) is default-deny
// like everything else. The one baseline permit: within a trust domain.
// Across trust domains nothing permits, so it is refused unless an operator
// permits that edge (see the module docstring).
@id("permit-delegation-same-trust-domain")
permit (principal, action == Action::"delegate", resource)
when { context.same_trust_domain };

// Restricted data does not leave its owner: a task that has read restricted
// data may delegate only to an agent with the same owner.
@id("no-restricted-data-to-other-owners")
forbid (principal, action == Action::"delegate", resource)
when { context.taint_sensitivity >= 3 && principal.owner != resource.owner };

// Credential issuance (Action::"issue_credential", resource Credential) is
// default-deny. The one baseline permit: for a tool the mandate names.
@id("permit-credential-within-mandate")
permit (principal, action == Action::"issue_credential", resource)
when { context.tool_in_mandate };

// Credentials stay near the top of a delegation chain (MAX_CREDENTIAL_DEPTH).
@id("no-credential-deep-delegation")
forbid (principal, action == Action::"issue_credential", resource)
when { context.delegated && context.depth > 1 };

// A delegated task that has read restricted data gets no downstream credential.
@id("no-credential-delegated-restricted-taint")
forbid (principal, action == Action::"issue_credential", resource)
when { context.delegated && context.taint_sensitivity >= 3 };
"""

BASELINE_IDS: Final[tuple[str, ...]] = (
    "permit-within-mandate",
    "mandate-tool-scope",
    "mandate-destination-scope",
    "sensitivity-ceiling",
    "budget-exhausted",
    "exfiltration-after-untrusted-read",
    "exfiltration-after-confidential-read",
    "approval-high-risk-act",
    "permit-delegation-same-trust-domain",
    "no-restricted-data-to-other-owners",
    "permit-credential-within-mandate",
    "no-credential-deep-delegation",
    "no-credential-delegated-restricted-taint",
)
"""The ``@id`` of every baseline policy, in file order (checked by the tests)."""
