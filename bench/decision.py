"""Benchmark: the in-process decision (DESIGN §8), beside floors measured in the same run.

    python bench/decision.py [--calls N]

For 10, 100 and 1,000 authored operator policies it measures ``authorize``
(cached task token, a fresh proof per call, durable audit group commit) and
the floor: one bare ``cedarpy.is_authorized`` call on cached handles over the
whole policy set, with the same context. It also measures proof-of-possession
verification against the raw ``cryptography`` verify, and token issuance.
Ratios are what to track; absolute numbers move with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cedarpy
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from remit.agent import AgentSession
from remit.canonical import digest
from remit.config import Settings
from remit.core.keys import generate_instance_key
from remit.core.policy import PolicySource
from remit.core.policy_pack import BASELINE, SCHEMA
from remit.core.tokens import make_call_proof, verify_call_proof
from remit.runtime import build_remit, catalog_from_yaml

CATALOG = """
tools:
  - {name: docs/read, privilege: read, labels: [internal]}
  - {name: email/send, privilege: act, destinations: {to: email}}
"""


def operator_policies(n: int) -> str:
    """n policies spread over 50 servers and many tools, as a large deployment would author them."""
    out = []
    for i in range(n):
        server, tool = f"svc{i % 50}", f"tool{i}"
        if i % 10 == 0:
            out.append(
                f'@id("p{i}") forbid (principal, action in [Action::"read", Action::"write", Action::"act"], resource in ToolGroup::"{server}") '
                f"when {{ context.anomaly_score > {50 + i % 50} }};"
            )
        elif i % 10 == 1:
            out.append(
                f'@id("p{i}") forbid (principal, action == Action::"act", resource == Tool::"{server}/{tool}") '
                f'when {{ context.taint_flags.contains("pii") }};'
            )
        else:
            out.append(
                f'@id("p{i}") permit (principal, action == Action::"read", resource == Tool::"{server}/{tool}") '
                f"when {{ context.tool_in_mandate && context.budget_remaining > {i % 7} }};"
            )
    return "\n".join(out)


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def bench_decisions(n_policies: int, calls: int, durable: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = replace(
            Settings(), data_dir=Path(tmp), audit_durable=durable, max_calls_per_minute=10**9
        )
        remit = build_remit(settings, catalog=catalog_from_yaml(CATALOG))
        text = operator_policies(n_policies)
        remit.load_policies([PolicySource("bench.cedar", text)])
        remit.register_principal("user:bench@x.example")
        agent = remit.register_agent(
            "bench",
            owner="ops",
            ceiling={
                "tools": ["docs/read", "email/send"],
                "privileges": ["read", "act"],
                "max_sensitivity": "internal",
            },
        )
        session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id))
        task = session.open_task(
            principal="user:bench@x.example",
            intent={
                "purpose": "bench",
                "tools": ["docs/read"],
                "call_budget": 10_000,
                "ttl_seconds": 3600,
            },
        )
        args = {"q": "quarterly report"}
        task.authorize("docs/read", args)  # warm: token cache, slice cache
        proofs = [session.proof(task.token, "docs/read", args) for _ in range(calls)]
        it = iter(proofs)
        samples = timed(
            lambda: remit.authorize(
                task_token=task.token, proof=next(it), tool="docs/read", arguments=args
            ),
            calls,
        )
        decision = remit.authorize(
            task_token=task.token,
            proof=session.proof(task.token, "docs/read", args),
            tool="docs/read",
            arguments=args,
        )
        assert decision.allowed, decision.reasons
        slice_size = remit.policy.slice_size("read", "docs/read")

        # Floor: bare cedarpy on cached handles over the whole (unsliced) set, same context shape.
        schema = cedarpy.Schema.from_str(SCHEMA)
        policies = cedarpy.PolicySet.from_str(BASELINE + "\n" + text)
        entities = cedarpy.Entities.from_json_str(
            json.dumps(
                [
                    {
                        "uid": {"type": "Agent", "id": agent.agent_id},
                        "attrs": {"owner": "ops", "trust_domain": "remit.local"},
                        "parents": [],
                    },
                    {"uid": {"type": "ToolGroup", "id": "docs"}, "attrs": {}, "parents": []},
                    {
                        "uid": {"type": "Tool", "id": "docs/read"},
                        "attrs": {"privilege": "read", "risk": []},
                        "parents": [{"type": "ToolGroup", "id": "docs"}],
                    },
                ]
            ),
            schema,
        )
        request = {
            "principal": {"type": "Agent", "id": agent.agent_id},
            "action": {"type": "Action", "id": "read"},
            "resource": {"type": "Tool", "id": "docs/read"},
            "context": {
                "mode": "enforce",
                "instance": "ins_x",
                "task": {
                    "id": "t",
                    "principal": "p",
                    "purpose": "bench",
                    "sensitivity_ceiling": 1,
                    "delegation_depth": 0,
                },
                "tool_in_mandate": True,
                "destinations": [],
                "destinations_explicit": [],
                "destinations_by_pattern": [],
                "destinations_outside": [],
                "output_sensitivity": 1,
                "output_flags": [],
                "taint_sensitivity": 1,
                "taint_flags": [],
                "budget_remaining": 10,
                "approved": False,
                "anomaly_score": 0,
                "delegated": False,
                "hour_utc": 12,
            },
        }
        assert cedarpy.is_authorized(request, policies, entities).allowed
        floor = timed(lambda: cedarpy.is_authorized(request, policies, entities), calls)
        remit.close()
    p50, p99 = percentiles(samples)
    f50, f99 = percentiles(floor)
    return {
        "policies": n_policies,
        "slice": slice_size,
        "p50": p50,
        "p99": p99,
        "floor_p50": f50,
        "floor_p99": f99,
    }


def bench_proof(calls: int) -> dict[str, float]:
    key = generate_instance_key()
    token = "x" * 600
    args_digest = digest({"q": 1})
    now = time.time()
    proof = make_call_proof(key, token=token, tool="docs/read", args_digest=args_digest, now=now)
    pub = key.public_key()
    ours = timed(
        lambda: verify_call_proof(
            proof, public_key=pub, token=token, tool="docs/read", args_digest=args_digest, now=now
        ),
        calls,
    )
    sig = key.sign(b"y" * 200, ec.ECDSA(hashes.SHA256()))
    raw = timed(lambda: pub.verify(sig, b"y" * 200, ec.ECDSA(hashes.SHA256())), calls)
    return {"proof_p50": statistics.median(ours), "raw_p50": statistics.median(raw)}


def bench_issuance(seconds: float = 2.0) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        remit = build_remit(
            replace(Settings(), data_dir=Path(tmp)), catalog=catalog_from_yaml(CATALOG)
        )
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            remit.tokens.issue_task(
                agent_id="spiffe://remit.local/agent/bench",
                instance_id="ins_benchbenchbenchbench",
                task_id=f"tsk_{n:022d}",
                jkt="A" * 43,
                ttl=300.0,
                mandate_digest="sha256:" + "0" * 64,
                authorization_details=[{"type": "remit_task", "tools": ["docs/read"]}],
            )
            n += 1
        rate = n / (time.perf_counter() - start)
        remit.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print(f"Remit decision benchmark ({args.calls} calls per row; µs)")
    print(
        f"{'audit':8} {'policies':>8} {'slice':>6} {'p50':>8} {'p99':>8} {'floor p50':>10} {'ratio p50':>10}"
    )
    for durable in (True, False):
        for n in (10, 100, 1000):
            r = bench_decisions(n, args.calls, durable)
            print(
                f"{'durable' if durable else 'enqueue':8} {r['policies']:>8} {r['slice']:>6} {r['p50']:>8.0f} "
                f"{r['p99']:>8.0f} {r['floor_p50']:>10.0f} {r['p50'] / r['floor_p50']:>9.2f}x"
            )
    pr = bench_proof(args.calls)
    print(
        f"proof of possession verify p50 {pr['proof_p50']:.0f} µs vs raw verify {pr['raw_p50']:.0f} µs: "
        f"{pr['proof_p50'] / pr['raw_p50']:.2f}x (budget 1.3x)"
    )
    rate = bench_issuance()
    print(f"task token issuance: {rate:,.0f} per second on one core (budget 10,000)")


if __name__ == "__main__":
    main()
