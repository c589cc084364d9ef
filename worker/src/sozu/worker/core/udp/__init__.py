"""UDP load balancing: the sans-io flow core and its helpers (udp.md §1-4, §8-11).

Modules: `manager` (FlowManager, one per listener), `flow` (per-flow state), `inputs` and
`outputs` (the records crossing the core boundary), `config`, `limits`, `proxy_protocol`,
`egress`, `deadlines`, `counters`, `flow_key`, and `simulation` (the deterministic harness,
`python -m simulation.udp`). This package imports nothing at all so that a future
trio shell module living here cannot leak into the cores; import the submodules directly.
"""
