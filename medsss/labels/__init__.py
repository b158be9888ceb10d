"""Training sets derived from stored trees by label rules: SFT chains, PRM step labels."""

from medsss.labels.rules import LABEL_RULES, prm_labels

__all__ = ["LABEL_RULES", "prm_labels"]
