"""The process reward model: a causal-LM body with a scalar head read at step ends.

``ProcessRewardModel`` holds the body (optionally LoRA-wrapped by peft) and a linear head; its
``step_logits`` gathers the head's logit at every score position. Training applies
binary cross-entropy with soft targets to exactly those logits; scoring reads their sigmoid.
The dual-sided PRM (``head=dual``) has a second linear head on the same hidden states, trained on
penalty targets ``1[V_k < V_{k-1}]``; it scores ``clip(p_value - lambda * p_penalty, 0, 1)``
(docs/method.md#the-dual-sided-prm).
``PRMScorer`` scores all steps of a batch of candidate solutions in one forward pass, for a model
of this layout or the released MedSSS layout (a two-class token classifier, score = softmax class 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from medsss.io import read_json, write_json
from medsss.training.prm_inputs import PRMInput, collate_prm, prm_inputs

HEAD_FILE = "value_head.safetensors"
PENALTY_HEAD_FILE = "penalty_head.safetensors"
CONFIG_FILE = "prm_config.json"
HEADS = ("single", "dual")


@dataclass(frozen=True)
class PRMHeadConfig:
    """The PRM's heads, saved as ``prm_config.json``. ``head``: ``single`` (the value head) or
    ``dual`` (plus the penalty head). For ``dual`` only: ``penalty_weight`` alpha in
    ``loss = value BCE + alpha * penalty BCE`` and ``penalty_scale`` lambda in
    ``score = clip(p_value - lambda * p_penalty, 0, 1)``."""

    head: str = "single"
    penalty_weight: float = 0.3
    penalty_scale: float = 0.5

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"PRM head '{self.head}' must be one of {HEADS}")
        for name in ("penalty_weight", "penalty_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"PRM {name} must be a number >= 0, not {value!r}")

    @property
    def dual(self) -> bool:
        return self.head == "dual"

    @classmethod
    def read(cls, folder: str | Path) -> PRMHeadConfig:
        """The heads of the PRM saved in ``folder``; a folder without ``prm_config.json`` (saved
        before the dual head existed) holds a single-head PRM."""
        path = Path(folder) / CONFIG_FILE
        if not path.exists():
            return cls()
        saved = read_json(path)
        known = {f.name for f in fields(cls)}
        if not isinstance(saved, dict) or not set(saved) <= known:
            raise ValueError(f"{path}: expected an object with keys among {sorted(known)}, got {saved!r}")
        try:
            return cls(**saved)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


class DualLoss(NamedTuple):
    total: torch.Tensor  # value + penalty_weight * penalty: what is minimised
    value: torch.Tensor
    penalty: torch.Tensor


class ProcessRewardModel(nn.Module):
    def __init__(self, body: nn.Module, hidden_size: int, heads: PRMHeadConfig | None = None) -> None:
        super().__init__()
        # A Hugging Face model or peft's wrapper of one: save_pretrained is theirs, not nn.Module's.
        self.body: Any = body
        self.heads = heads or PRMHeadConfig()
        self.head = nn.Linear(hidden_size, 1)
        # Same hidden states, same positions: the second head costs one row of weights, not a forward.
        self.penalty_head = nn.Linear(hidden_size, 1) if self.heads.dual else None

    @classmethod
    def from_causal_lm(cls, path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                       heads: PRMHeadConfig | None = None):
        """The PRM at ``path``: a saved PRM (body, heads and ``prm_config.json``) or a causal LM to
        put fresh heads on. ``heads`` (None: as saved, single without ``prm_config.json``) chooses
        the heads; a head without a saved file starts freshly initialised."""
        from transformers import AutoModel

        adapter = Path(path) / "adapter_config.json"
        if adapter.exists():  # a LoRA adapter saved unmerged: load its base, then the adapter
            from peft import PeftModel

            base_path = read_json(adapter)["base_model_name_or_path"]
            base = AutoModel.from_pretrained(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
            body = PeftModel.from_pretrained(base, path)
            hidden = base.config.hidden_size
        else:
            body = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
            hidden = body.config.hidden_size
        saved = PRMHeadConfig.read(path)
        # The heads stay float32 whatever the body's dtype: they are trained in full (AdamW updates
        # to bfloat16 weights are lost below its precision) and are a single row of weights each.
        model = cls(body, hidden, heads or saved)
        from safetensors.torch import load_file

        head = Path(path) / HEAD_FILE
        if head.exists():
            model.head.load_state_dict(load_file(str(head)))
        penalty = Path(path) / PENALTY_HEAD_FILE
        if model.penalty_head is not None and penalty.exists():
            model.penalty_head.load_state_dict(load_file(str(penalty)))
        elif model.penalty_head is not None and saved.dual:
            raise FileNotFoundError(f"{Path(path) / CONFIG_FILE} says head=dual but {penalty} is missing")
        return model

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The value head's logit at every token (batch x tokens)."""
        hidden = self._hidden_states(input_ids, attention_mask)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def _hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # No KV cache: nothing decodes after this forward, and the cache would hold every layer's keys.
        output = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return output.last_hidden_state

    def head_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    score_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The value and penalty heads' logits at the score positions (batch x steps each; the
        penalty None for a single head), from one body forward; padded positions (-1) give 0."""
        hidden = self._hidden_states(input_ids, attention_mask)
        # The heads read only the score positions: gathered first, the float32 copy is a few rows.
        index = score_positions.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1])
        states = hidden.gather(1, index).to(self.head.weight.dtype)
        padding = score_positions < 0
        value = self.head(states).squeeze(-1).masked_fill(padding, 0.0)
        if self.penalty_head is None:
            return value, None
        return value, self.penalty_head(states).squeeze(-1).masked_fill(padding, 0.0)

    def step_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    score_positions: torch.Tensor) -> torch.Tensor:
        """The value head's logits at the score positions (batch x steps); padded positions (-1) give 0."""
        return self.head_logits(input_ids, attention_mask, score_positions)[0]

    def step_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    score_positions: torch.Tensor, penalty_scale: float | None = None) -> torch.Tensor:
        """Step scores at the score positions: ``sigmoid`` of the value logit for a single head;
        :func:`dual_score` with ``penalty_scale`` (None: the saved one) for a dual head."""
        value, penalty = self.head_logits(input_ids, attention_mask, score_positions)
        if penalty is None:
            return torch.sigmoid(value.float())
        scale = self.heads.penalty_scale if penalty_scale is None else penalty_scale
        return dual_score(value, penalty, scale)

    def save(self, out: str | Path) -> None:
        from safetensors.torch import save_file

        out = Path(out)
        self.body.save_pretrained(out, safe_serialization=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(out / HEAD_FILE))
        if self.penalty_head is not None:
            save_file({k: v.contiguous() for k, v in self.penalty_head.state_dict().items()},
                      str(out / PENALTY_HEAD_FILE))
        write_json(out / CONFIG_FILE, asdict(self.heads))


def soft_bce(step_logits: torch.Tensor, labels: torch.Tensor, score_positions: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with soft targets over the real score positions only."""
    mask = (score_positions >= 0).float()
    if weights is not None:
        mask = mask * weights
    losses = nn.functional.binary_cross_entropy_with_logits(step_logits.float(), labels.float(),
                                                            reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1e-8)


def dual_head_loss(value_logits: torch.Tensor, penalty_logits: torch.Tensor, labels: torch.Tensor,
                   penalties: torch.Tensor, score_positions: torch.Tensor, weights: torch.Tensor | None,
                   penalty_weight: float) -> DualLoss:
    """The dual-sided PRM's loss: the value head's soft BCE (``weights`` respected) plus
    ``penalty_weight`` times the penalty head's BCE on its 0/1 targets at the same real positions
    (unweighted: rollout weights describe the confidence of one value, not of a comparison)."""
    value = soft_bce(value_logits, labels, score_positions, weights)
    penalty = soft_bce(penalty_logits, penalties, score_positions)
    return DualLoss(value + penalty_weight * penalty, value, penalty)


def dual_score(value_logits: torch.Tensor, penalty_logits: torch.Tensor,
               penalty_scale: float) -> torch.Tensor:
    """``clip(sigmoid(value) - penalty_scale * sigmoid(penalty), 0, 1)``, in float32."""
    combined = torch.sigmoid(value_logits.float()) - penalty_scale * torch.sigmoid(penalty_logits.float())
    return combined.clamp(0.0, 1.0)


class PRMScorer:
    """Scores every step k >= 1 of candidate solutions; one forward per batch of candidates.
    ``penalty_scale`` replaces a dual-head PRM's saved lambda (None: as saved)."""

    def __init__(self, model: nn.Module, tokenizer, system_prompt: str | None, layout: str = "scalar",
                 device: str = "cpu", batch_size: int = 16, penalty_scale: float | None = None) -> None:
        if layout not in ("scalar", "token_classifier"):
            raise ValueError(f"PRM layout '{layout}' must be 'scalar' or 'token_classifier'")
        if penalty_scale is not None:
            if layout != "scalar" or getattr(model, "penalty_head", None) is None:
                raise ValueError(f"penalty_scale={penalty_scale} needs a dual-head PRM; this one has no "
                                 "penalty head (leave the scale null)")
            if penalty_scale < 0:
                raise ValueError(f"penalty_scale must be >= 0, not {penalty_scale}")
        self.penalty_scale = penalty_scale
        # A ProcessRewardModel (layout scalar) or a Hugging Face token classifier (token_classifier).
        self.model: Any = model.to(device).eval()
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.layout = layout
        self.device = device
        self.batch_size = batch_size

    def inputs(self, question: str, steps: Sequence[str]) -> PRMInput:
        return prm_inputs(self.tokenizer, question, steps, self.system_prompt)

    def score(self, question: str, candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each candidate (the texts of its steps 0..K), the scores of steps 1..K."""
        return self.score_chains([(question, steps) for steps in candidates])

    @torch.inference_mode()
    def score_chains(self, chains: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """Scores of steps 1..K of each ``(question, steps)``; ``batch_size`` chains per forward."""
        items = [self.inputs(question, steps) for question, steps in chains]
        scores: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            batch = {k: v.to(self.device) for k, v in collate_prm(chunk, self._pad_id()).items()}
            probabilities = self._step_probabilities(batch)
            for item, row in zip(chunk, probabilities.tolist(), strict=True):
                scores.append(row[: len(item.score_positions)])
        return scores

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _step_probabilities(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        positions = batch["score_positions"]
        if self.layout == "scalar":
            return self.model.step_scores(batch["input_ids"], batch["attention_mask"], positions,
                                          self.penalty_scale)
        # Released MedSSS PRM: token classification with two classes; the step score is P(class 1).
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        index = positions.clamp(min=0)[..., None].expand(-1, -1, logits.shape[-1])
        return torch.softmax(logits.gather(1, index).float(), dim=-1)[..., 1]
