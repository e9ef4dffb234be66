"""automl-ft's text model for transformers: the fine-tuned encoder, masked mean (or [CLS]) pooling, a linear head.

automl-ft writes this file beside the weights so that ``transformers.pipeline("text-classification", model=DIR,
trust_remote_code=True)`` and ``AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)``
give the fine-tuned model's own logits: transformers' *ForSequenceClassification classes feed their head through a
pooler ([CLS] + dense + tanh) that cannot express mean pooling. ``model.safetensors`` stays the plain encoder
(``AutoModel.from_pretrained(DIR)`` loads it); the head is ``head.safetensors``.

This file is copied verbatim into every text model's ``hf/`` folder as ``modeling_automl_ft.py`` (hf_format.py):
it imports only torch, transformers and safetensors, never automl_ft, so it runs wherever transformers does.
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class AutomlFtForSequenceClassification(PreTrainedModel):
    config_class = PretrainedConfig
    base_model_prefix = "encoder"

    def __init__(self, config, encoder=None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config)
        self.pooling = getattr(config, "automl_ft_pooling", "mean")
        self.head = nn.Linear(config.hidden_size, config.num_labels)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        from safetensors.torch import load_file
        from transformers.utils import cached_file

        kwargs.pop("trust_remote_code", None)
        for private in [k for k in kwargs if k.startswith("_from_")]:  # set by the Auto class: AutoModel sets its own
            kwargs.pop(private)
        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder")
               if k in kwargs}
        if not isinstance(config, PretrainedConfig):
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        try:  # the same encoder as training: no pooler (BERT-like models would add an untrained one)
            encoder = AutoModel.from_pretrained(pretrained_model_name_or_path, config=config, add_pooling_layer=False,
                                                **kwargs)
        except TypeError:
            encoder = AutoModel.from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)
        model = cls(config, encoder=encoder)
        head = load_file(cached_file(pretrained_model_name_or_path, "head.safetensors", **hub))
        model.head.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
        model.head.to(dtype=next(encoder.parameters()).dtype)
        return model.eval()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.head(pooled))
