"""medsss: slow-thinking medical language models by self-evolution (after MedS3).

Stages: MCTS synthesis of step-by-step trajectories, policy SFT and process reward model
training, PRM-guided decoding and evaluation. The entry point is ``python -m medsss.run``.
"""

__version__ = "0.1.0"
