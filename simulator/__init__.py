"""A local HTTP stand-in for a Microsoft 365 tenant: Graph, Exchange admin, managed identity, tickets.

Used by tests, the demo and benchmarks; never deployed. See ``Simulator`` and ``load_tenant``.
"""

from simulator.faults import ROUTES, Fault
from simulator.server import Simulator, serve
from simulator.tenant import Tenant, load_tenant

__all__ = ["ROUTES", "Fault", "Simulator", "Tenant", "load_tenant", "serve"]
