"""The MCP gateway: every tool call of an MCP agent goes through Remit.

``remit gateway`` fronts upstream MCP servers, each under a namespace
(``<server>__<tool>`` on the wire, ``<server>/<tool>`` in the catalog), over
stdio (a sidecar holding the agent's instance key) or streamable HTTP (the
agent sends its task token and a proof per request). It translates and
forwards; Remit decides. See docs/gateway.md.

Modules: ``config`` (the config file), ``names`` (wire and catalog names),
``upstream`` (connections to the upstream servers), ``core`` (list and call),
``results`` (what a refusal looks like), ``leased`` (credentials from leases: a
connection per lease), ``redact`` (credentials never reach the agent),
``sidecar`` (attest and open the task), ``http_auth`` (who calls over HTTP),
``server`` (the MCP server over both transports), ``stdio`` (the sidecar's
stdin/stdout without a thread per line), ``run`` (what the command does),
``agent_auth`` (the agent-side ``httpx2.Auth`` that signs each request).
"""
