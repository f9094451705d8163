"""The client library (blocking, asyncio) and its result types. May import: service._proto only."""

from service.client.aio import AsyncClient, AsyncSession
from service.client.sync import Client, Session
from service.client.types import ModelInfo, Prediction, RequestError, Result, SequenceScore, SessionInfo

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "ModelInfo",
    "Prediction",
    "RequestError",
    "Result",
    "SequenceScore",
    "Session",
    "SessionInfo",
]
