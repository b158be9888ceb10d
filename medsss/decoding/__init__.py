"""PRM-guided decoding: step-score aggregation and answer selection (see
docs/method.md#decoding-strategies)."""

from medsss.decoding.aggregate import AGGREGATIONS, aggregate
from medsss.decoding.select import SELECTIONS, AnswerVote, answer_key, normalise_text, rank_answers, select

__all__ = ["AGGREGATIONS", "SELECTIONS", "AnswerVote", "aggregate", "answer_key", "normalise_text",
           "rank_answers", "select"]
