"""Text generation backends behind one protocol (DESIGN.md section 7)."""

from medsss.generation.base import Backend, Completion, GenerationRequest, GenerationStats

__all__ = ["Backend", "Completion", "GenerationRequest", "GenerationStats"]
