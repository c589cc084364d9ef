"""UDP load balancing: the sans-io flow core and its helpers (docs/udp.md).

Modules: `manager` (FlowManager, one per listener), `flow` (per-flow state), `inputs` and
`outputs` (the records crossing the core boundary), `config`, `limits`, `proxy_protocol`,
`egress`, `deadlines`, `counters`, `flow_key`, `health`. The deterministic harness lives
outside the runtime packages (`python -m simulation.udp`). This package imports nothing at
all so that a future trio shell module living here cannot leak into the cores; import the
submodules directly.
"""
