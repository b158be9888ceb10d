"""PRM-guided decoding: step-score aggregation and answer selection (DESIGN.md section 6)."""

from medsss.decoding.aggregate import AGGREGATIONS, aggregate
from medsss.decoding.select import SELECTIONS, answer_key, select

__all__ = ["AGGREGATIONS", "SELECTIONS", "aggregate", "answer_key", "select"]
