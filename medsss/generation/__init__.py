"""Text generation backends behind one protocol (see docs/architecture.md#generation-backends)."""

from medsss.generation.base import Backend, Completion, GenerationRequest, GenerationStats

__all__ = ["Backend", "Completion", "GenerationRequest", "GenerationStats"]
