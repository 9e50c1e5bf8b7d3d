"""edumesh message contracts: pydantic models only, one module per owning service.

A contract is owned by the service that sends an event or receives a command/RPC; other services
depend on this package, never on each other. Models must not import anything from edumesh except
this package, and must not contain behaviour beyond validation.
"""

from mesh_contracts.base import Command, Contract, Event, RpcReply, RpcRequest, all_contracts

__all__ = ["Command", "Contract", "Event", "RpcReply", "RpcRequest", "all_contracts"]
