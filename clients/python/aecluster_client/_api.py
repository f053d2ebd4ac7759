"""What the four clients share whatever the transport: the context manager and
``cluster`` (one image) on top of each client's ``cluster_batch``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from aecluster_client.types import ImageInput, Prediction, Reconstruction


class SyncAPI(ABC):
    """The blocking clients' shared surface."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (channel or pool)."""

    @abstractmethod
    def cluster_batch(self, images: Sequence[ImageInput], *,
                      reconstruction: Reconstruction = "none", embedding: bool = False,
                      top_k: int = 0, timeout: float | None = None) -> list[Prediction]:
        """Cluster several images in one request; the answers are in their order."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def cluster(self, image: ImageInput, *, reconstruction: Reconstruction = "none",
                embedding: bool = False, top_k: int = 0,
                timeout: float | None = None) -> Prediction:
        """Cluster one image."""
        return self.cluster_batch([image], reconstruction=reconstruction, embedding=embedding,
                                  top_k=top_k, timeout=timeout)[0]


class AsyncAPI(ABC):
    """The asyncio clients' shared surface."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection (channel or pool)."""

    @abstractmethod
    async def cluster_batch(self, images: Sequence[ImageInput], *,
                            reconstruction: Reconstruction = "none", embedding: bool = False,
                            top_k: int = 0, timeout: float | None = None) -> list[Prediction]:
        """Cluster several images in one request; the answers are in their order."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def cluster(self, image: ImageInput, *, reconstruction: Reconstruction = "none",
                      embedding: bool = False, top_k: int = 0,
                      timeout: float | None = None) -> Prediction:
        """Cluster one image."""
        return (await self.cluster_batch([image], reconstruction=reconstruction,
                                         embedding=embedding, top_k=top_k,
                                         timeout=timeout))[0]
