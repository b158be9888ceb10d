"""Problem records, loaders for every supported input format, prompts and answer verification."""

from medsss.data.records import Problem
from medsss.data.verify import extract_answer, is_correct, option_of

__all__ = ["Problem", "extract_answer", "is_correct", "option_of"]
